"""The consume loop and the delivery guarantee on an in-memory broker with transactions."""
from __future__ import annotations

import base64
import json
import threading
import time
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry

from worker.config import KafkaConfig, WorkerConfig
from worker.core.dead_letters import DeadLetter
from worker.metrics import Health, WorkerMetrics
from worker.runtime.accounting import Latencies
from worker.runtime.clocks import LatencyWindow
from worker.runtime.delivery import AtLeastOnce, ExactlyOnce, Fenced
from worker.runtime.outputs import Outputs
from worker.runtime.runner import Runner
from worker.runtime.watchdog import DeviceCalls, timed
from worker.testing.fakes import (FakeBroker, FakeClassifier, FakeConsumer, FakeDetector, FakeProducer,
                                  FakeRecord, InlineThreads)

from .conftest import FACE, UPLOADED_AT, VIDEOS

KAFKA = KafkaConfig()
NOW = UPLOADED_AT + timedelta(seconds=7.5)
# when the records are appended: the platform's clock, 2.5 s after the producer's uploaded_at
APPENDED_AT = UPLOADED_AT + timedelta(seconds=2.5)
TRUNCATED = DeadLetter("video_truncated", "moov box missing")


class World:
    """An in-memory broker, one worker on it (inline processing), and its metrics."""

    def __init__(self, pipeline, delivery: str = "exactly_once", broker: FakeBroker | None = None,
                 worker_id: str = "worker-1", inline: bool = True, calls: DeviceCalls | None = None,
                 **worker):
        self.broker = broker or FakeBroker(clock=APPENDED_AT.timestamp)
        self.registry = CollectorRegistry()
        self.metrics = WorkerMetrics(self.registry)
        self.worker_cfg = WorkerConfig(id=worker_id, **worker)
        self.health = Health(self.metrics, oldest_call=calls.oldest if calls else lambda: None,
                             device_call_deadline_s=self.worker_cfg.device_call_deadline_s)
        if calls is not None:
            self.metrics.watch_device_calls(calls.oldest_seconds)
        self.pipeline = pipeline
        self.mode = delivery
        self.inline = inline
        self.runner = self.worker()

    def worker(self) -> Runner:
        self.consumer = FakeConsumer(self.broker, KAFKA.upload_topic, KAFKA.group_id)
        self.producers: list[FakeProducer] = []
        if self.mode == "exactly_once":
            def make():
                self.producers.append(FakeProducer(self.broker, f"tx-{self.worker_cfg.id}"))
                return self.producers[-1]
            delivery = ExactlyOnce(make, 1.0, on_abort=self.metrics.transaction_aborts.inc)
        else:
            self.producers.append(FakeProducer(self.broker))
            delivery = AtLeastOnce(self.producers[0], self.consumer.commit, 1.0)
        self.ticks = 0.0  # settle() advances this clock by a second a step
        clock = (lambda: self.ticks) if self.inline else time.monotonic
        latencies = Latencies(self.metrics, LatencyWindow.of(self.worker_cfg))
        outputs = Outputs(self.pipeline, KAFKA, self.worker_cfg, on_start=latencies.started,
                          now=lambda: NOW)
        runner = Runner(self.consumer, delivery, outputs, KAFKA, self.worker_cfg,
                        self.metrics, self.health, clock=clock, latencies=latencies)
        runner.start()
        runner.retry_backoff_s = 0.0
        self.threads = InlineThreads(runner.outputs.handle)
        return runner

    def upload(self, value: bytes | None, key: bytes | None = None) -> int:
        return self.broker.append(KAFKA.upload_topic, value, key).offset

    def settle(self, steps: int = 40) -> None:
        for _ in range(steps):
            self.ticks += 1.0
            self.runner.step(self.threads)

    def verdicts(self) -> list[dict]:
        return [json.loads(v) for v in self.broker.values(KAFKA.verdict_topic)]

    def dead_letters(self) -> list[dict]:
        return [json.loads(v) for v in self.broker.values(KAFKA.dead_letter_topic)]

    def committed(self) -> int | None:
        return self.broker.committed.get((KAFKA.group_id, self.consumer.tp))

    def sample(self, name: str, **labels) -> float | None:
        return self.registry.get_sample_value(name, labels)


@pytest.fixture(params=["exactly_once", "at_least_once"])
def world(request, make_pipeline):
    table = {**VIDEOS, "file:///videos/truncated.mp4": TRUNCATED}
    return World(make_pipeline(table=table), delivery=request.param)


@pytest.fixture
def eos(make_pipeline):
    return World(make_pipeline(), delivery="exactly_once")


def outputs_by_offset(world: World, inputs: dict[int, str | None]) -> dict[int, list[tuple[str, dict]]]:
    """Map each output record back to the input offset it came from."""
    offset_of_event = {event_id: offset for offset, event_id in inputs.items() if event_id}
    found: dict[int, list[tuple[str, dict]]] = {offset: [] for offset in inputs}
    for verdict in world.verdicts():
        found[offset_of_event[verdict["data"]["source_event_id"]]].append(("verdict", verdict))
    for letter in world.dead_letters():
        found[letter["data"]["source_offset"]].append((letter["data"]["reason"], letter))
    return found


def test_every_event_ends_as_exactly_one_output(world, make_event):
    ftp = json.loads(make_event("vid-x"))
    ftp["data"]["video_uri"] = "ftp://media.example.com/x.mp4"
    inputs = {  # offset -> event id of the good events
        world.upload(make_event("vid-a", "file:///videos/a.mp4"), key=b"vid-a"): "evt-vid-a",
        world.upload(b"this is not json", key=b"k-1"): None,
        world.upload(make_event("vid-b", "file:///videos/b.mp4")): "evt-vid-b",
        world.upload(json.dumps(ftp).encode()): None,
        world.upload(make_event("vid-t", "file:///videos/truncated.mp4")): "evt-vid-t",
        world.upload(None): None,
        world.upload(make_event("vid-404", "file:///videos/missing.mp4")): "evt-vid-404",
        world.upload(make_event("vid-c", "file:///videos/c.mp4")): "evt-vid-c",
    }
    world.settle()

    found = outputs_by_offset(world, inputs)
    assert {offset: [kind for kind, _ in outs] for offset, outs in found.items()} == {
        0: ["verdict"], 1: ["invalid_json"], 2: ["verdict"], 3: ["schema_violation"],
        4: ["video_truncated"], 5: ["invalid_json"], 6: ["video_not_found"], 7: ["verdict"]}
    assert world.committed() == 8

    verdict_keys = [r.key for r in world.broker.logs[KAFKA.verdict_topic]]
    assert verdict_keys == [b"vid-a", b"vid-b", b"vid-c"]
    assert all(v["data"]["decision"] == "takedown" for v in world.verdicts())
    latency = found[0][0][1]["data"]["latency_seconds"]
    assert (latency["end_to_end"], latency["since_uploaded_at"]) == (pytest.approx(5.0), pytest.approx(7.5))

    not_json = found[1][0][1]["data"]
    assert base64.b64decode(not_json["original_value_base64"]) == b"this is not json"
    assert base64.b64decode(not_json["original_key_base64"]) == b"k-1"
    assert world.broker.logs[KAFKA.dead_letter_topic][0].key == b"k-1"
    truncated = found[4][0][1]
    assert (truncated["subject"], truncated["data"]["video_id"], truncated["data"]["source_event_id"]) == (
        "vid-t", "vid-t", "evt-vid-t")
    assert truncated["data"]["message"] == "moov box missing"


@pytest.mark.parametrize("claimed", [UPLOADED_AT - timedelta(days=700), NOW + timedelta(hours=2)])
def test_a_skewed_producer_clock_is_counted_and_never_observed(make_pipeline, make_event, claimed):
    """An event whose uploaded_at is far in the past (a replayed file) or in the future (a
    skewed producer) leaves the latency histograms to the record's Kafka timestamp."""
    world = World(make_pipeline())
    world.upload(make_event("vid-a", "file:///videos/a.mp4", uploaded_at=claimed))
    world.settle()
    [verdict] = world.verdicts()
    latency = verdict["data"]["latency_seconds"]
    assert latency["end_to_end"] == pytest.approx(5.0)
    assert latency["since_uploaded_at"] == pytest.approx((NOW - claimed).total_seconds())
    assert world.sample("moderation_end_to_end_latency_seconds_sum") == pytest.approx(5.0)
    assert world.sample("moderation_claimed_end_to_end_latency_seconds_count") == 0
    assert world.sample("moderation_latency_out_of_window_total", clock="uploaded_at") == 1
    assert world.sample("moderation_latency_out_of_window_total", clock="kafka_record") == 0
    assert world.sample("moderation_queue_wait_seconds_sum") == pytest.approx(5.0)


def test_a_record_clock_out_of_the_window_is_counted_too(make_pipeline, make_event):
    """A CreateTime from a producing client whose clock is a year off, and a record with no
    timestamp at all: the verdict still arrives; neither is observed."""
    world = World(make_pipeline(), broker=FakeBroker(clock=(NOW - timedelta(days=365)).timestamp))
    world.upload(make_event("vid-a", "file:///videos/a.mp4"))
    world.settle()
    record = FakeRecord(KAFKA.upload_topic, 0, 1, None, make_event("vid-b", "file:///videos/b.mp4"))
    world.broker.logs[KAFKA.upload_topic].append(record)  # timestamp -1: the pre-0.10 format
    world.settle()
    assert [v["data"]["video_id"] for v in world.verdicts()] == ["vid-a", "vid-b"]
    assert world.verdicts()[1]["data"]["latency_seconds"]["end_to_end"] == pytest.approx(7.5)
    assert world.sample("moderation_end_to_end_latency_seconds_count") == 0
    assert world.sample("moderation_latency_out_of_window_total", clock="kafka_record") == 2
    assert world.sample("moderation_claimed_end_to_end_latency_seconds_sum") == pytest.approx(2 * 7.5)
    assert world.sample("moderation_queue_wait_seconds_count") == 0


def test_offsets_are_committed_one_event_at_a_time_in_order(make_pipeline, make_event):
    world = World(make_pipeline(), delivery="at_least_once")
    for name in "abc":
        world.upload(make_event(f"vid-{name}", f"file:///videos/{name}.mp4"))
    world.settle()
    assert world.consumer.commits == [1, 2, 3]


def test_metrics_count_decisions_and_dead_letters(world, make_event):
    for name in "abc":
        world.upload(make_event(f"vid-{name}", f"file:///videos/{name}.mp4"))
    world.upload(b"{")
    world.upload(b"[]")
    world.upload(make_event("vid-t", "file:///videos/truncated.mp4"))
    world.settle()
    assert world.sample("moderation_decisions_total", decision="takedown") == 3
    assert world.sample("moderation_decisions_total", decision="allow") == 0  # present from the start
    assert world.sample("moderation_dead_letters_total", reason="invalid_json") == 1
    assert world.sample("moderation_dead_letters_total", reason="schema_violation") == 1
    assert world.sample("moderation_dead_letters_total", reason="video_truncated") == 1
    assert world.sample("moderation_events_consumed_total") == 6
    assert world.sample("moderation_faces_detected_total") == 3 * 5
    # from the records' Kafka timestamps; the producer's uploaded_at is the claimed latency
    assert world.sample("moderation_end_to_end_latency_seconds_count") == 3
    assert world.sample("moderation_end_to_end_latency_seconds_sum") == pytest.approx(3 * 5.0)
    assert world.sample("moderation_claimed_end_to_end_latency_seconds_sum") == pytest.approx(3 * 7.5)
    assert world.sample("moderation_queue_wait_seconds_count") == 4  # events that parsed
    assert world.sample("moderation_queue_wait_seconds_sum") == pytest.approx(4 * 5.0)
    assert world.sample("moderation_latency_out_of_window_total", clock="uploaded_at") == 0
    assert world.sample("moderation_stage_duration_seconds_count", stage="publish") == 6
    assert world.sample("moderation_stage_duration_seconds_count", stage="classify") == 3
    assert world.sample("moderation_videos_in_flight") == 0
    assert world.sample("moderation_fetched_bytes_total") == 3 * 1024  # FakeFetcher's placeholder size
    assert world.sample("moderation_frames_decoded_total") == 3 * 5
    assert world.sample("moderation_batch_size_count", stage="detect_faces") == 3
    assert world.sample("moderation_batch_size_sum", stage="classify") == 3 * 5
    assert world.sample("moderation_assigned_partitions") == 1
    assert world.sample("moderation_topic_partitions", topic=KAFKA.upload_topic) == 1
    assert world.sample("moderation_dead_letters_total", reason="timeout") == 0
    assert world.sample("moderation_consumer_lag_records", topic=KAFKA.upload_topic, partition="0") == 0


def test_an_unacknowledged_output_is_retried_not_lost(world, make_event):
    for name in "abc":
        world.upload(make_event(f"vid-{name}", f"file:///videos/{name}.mp4"))
    world.broker.fail_next_sends = 1
    world.runner.step(world.threads)
    assert world.verdicts() == [] and world.committed() is None
    assert world.sample("moderation_publish_failures_total") == 1

    world.settle()
    assert [v["data"]["video_id"] for v in world.verdicts()] == ["vid-a", "vid-b", "vid-c"]
    assert world.committed() == 3
    assert world.sample("moderation_decisions_total", decision="takedown") == 3


def test_an_aborted_transaction_is_retried_and_shows_nothing_meanwhile(eos, make_event):
    eos.upload(make_event("vid-a", "file:///videos/a.mp4"))
    eos.broker.fail_next_commits = 1
    eos.runner.step(eos.threads)
    assert eos.verdicts() == [] and eos.committed() is None
    assert eos.broker.aborted == 1
    assert eos.sample("moderation_transaction_aborts_total") == 1
    eos.settle()
    assert [v["data"]["video_id"] for v in eos.verdicts()] == ["vid-a"]
    assert eos.committed() == 1


def test_a_crash_mid_transaction_leaves_nothing_and_the_restart_redoes_it(eos, make_event):
    eos.upload(make_event("vid-a", "file:///videos/a.mp4"))
    eos.upload(make_event("vid-b", "file:///videos/b.mp4"))
    eos.broker.fail_next_commits = 1
    eos.runner.step(eos.threads)  # vid-a's transaction failed ...
    # ... and the worker dies before retrying: no close, no commit.
    eos.runner = eos.worker()
    eos.settle()
    ids = [v["data"]["source_event_id"] for v in eos.verdicts()]
    assert ids == ["evt-vid-a", "evt-vid-b"]
    assert eos.committed() == 2


def test_a_zombie_with_the_same_transactional_id_is_fenced(eos, make_event):
    eos.upload(make_event("vid-a", "file:///videos/a.mp4"))
    eos.runner.step(eos.threads)
    zombie = eos.runner
    zombie_threads = eos.threads
    eos.runner = eos.worker()  # a new instance with the same id starts: the old one is fenced
    eos.upload(make_event("vid-b", "file:///videos/b.mp4"))
    with pytest.raises(Fenced):
        for _ in range(5):
            zombie.step(zombie_threads)
    assert eos.verdicts()[-1]["data"]["video_id"] == "vid-a"  # the zombie published nothing
    eos.settle()
    assert [v["data"]["video_id"] for v in eos.verdicts()] == ["vid-a", "vid-b"]


def test_a_member_of_an_older_group_generation_cannot_commit(eos, make_event):
    eos.upload(make_event("vid-a", "file:///videos/a.mp4"))
    eos.broker.rebalance(KAFKA.group_id)  # this worker missed the rebalance
    eos.runner.step(eos.threads)
    assert eos.verdicts() == [] and eos.committed() is None
    eos.runner.revoke({eos.consumer.tp})  # it learns at its next poll
    assert eos.sample("moderation_videos_in_flight") == 0
    eos.runner = eos.worker()  # the new owner, in the new generation
    eos.settle()
    assert [v["data"]["video_id"] for v in eos.verdicts()] == ["vid-a"]


def test_a_worker_the_group_dropped_commits_nothing_and_the_next_owner_redoes_it(eos, make_event):
    """Its poll loop stalled past max.poll.interval.ms: the broker would take its offsets
    (generation -1 skips the check), so the delivery refuses and retries after the rejoin."""
    eos.upload(make_event("vid-a", "file:///videos/a.mp4"))
    eos.consumer.drop()
    eos.broker.rebalance(KAFKA.group_id)
    eos.runner.step(eos.threads)
    assert eos.verdicts() == [] and eos.committed() is None
    assert eos.sample("moderation_publish_failures_total") == 1
    eos.runner.revoke({eos.consumer.tp})  # the rejoin at its next poll takes the partition
    eos.runner = eos.worker()
    eos.settle()
    assert [v["data"]["video_id"] for v in eos.verdicts()] == ["vid-a"] and eos.committed() == 1


def test_at_least_once_redelivery_keeps_the_output_id(make_pipeline, make_event):
    world = World(make_pipeline(), delivery="at_least_once")
    world.upload(make_event("vid-a", "file:///videos/a.mp4"))
    world.upload(b"not json")

    world.broker.fail_next_offset_commits = 1  # published, then the commit fails ...
    world.runner.step(world.threads)
    world.runner = world.worker()  # ... and the worker dies before retrying
    world.settle()
    verdict_ids = [v["id"] for v in world.verdicts()]
    letter_ids = [d["id"] for d in world.dead_letters()]
    assert len(verdict_ids) == 2 and verdict_ids[0] == verdict_ids[1]
    assert len(letter_ids) == 1


def test_a_resent_event_id_is_processed_once(eos, make_event):
    eos.upload(make_event("vid-a", "file:///videos/a.mp4"))
    eos.upload(make_event("vid-a", "file:///videos/a.mp4"))
    eos.settle()
    assert len(eos.verdicts()) == 1
    [letter] = eos.dead_letters()
    assert letter["data"]["reason"] == "duplicate_event"
    assert letter["data"]["source_offset"] == 1
    assert "/0/0" in letter["data"]["message"]


def test_an_unexpected_exception_is_an_internal_error_and_the_next_event_goes_on(make_pipeline, make_event):
    calls = []

    def boxes(position):
        calls.append(position)
        if len(calls) == 1:
            raise RuntimeError("detector exploded")
        return [FACE]

    world = World(make_pipeline(detector=FakeDetector(boxes)))
    world.upload(make_event("vid-a", "file:///videos/a.mp4"))
    world.upload(make_event("vid-b", "file:///videos/b.mp4"))
    world.settle()

    [letter] = world.dead_letters()
    assert letter["data"]["reason"] == "internal_error"
    assert "RuntimeError" in letter["data"]["message"] and "detector exploded" in letter["data"]["message"]
    assert (letter["data"]["source_offset"], letter["data"]["video_id"]) == (0, "vid-a")
    assert [v["data"]["video_id"] for v in world.verdicts()] == ["vid-b"]
    assert world.committed() == 2


def test_a_verdict_that_breaks_the_contract_is_never_published(make_pipeline, make_event):
    world = World(make_pipeline(classifier=FakeClassifier(lambda pos, box: 1.5)))
    world.upload(make_event())
    world.settle()
    assert world.verdicts() == []
    assert [d["data"]["reason"] for d in world.dead_letters()] == ["internal_error"]


class Gate:
    """A face detector that blocks until released, to hold a video in flight."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, position):
        self.entered.set()
        self.release.wait(30)
        return [FACE]


def _run_in_thread(world: World, stop: threading.Event) -> threading.Thread:
    assert not world.inline, "build the World with inline=False to run it on real threads"
    thread = threading.Thread(target=world.runner.run, args=(stop,), daemon=True)
    thread.start()
    return thread


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_a_partition_is_paused_while_its_video_is_in_flight_and_polling_goes_on(make_pipeline, make_event):
    gate = Gate()
    world = World(make_pipeline(detector=FakeDetector(gate)), inline=False)
    polls = []
    real_poll = world.consumer.poll
    world.consumer.poll = lambda **kw: polls.append(1) or real_poll(**kw)
    world.upload(make_event("vid-a", "file:///videos/a.mp4"))
    stop = threading.Event()
    thread = _run_in_thread(world, stop)
    try:
        assert gate.entered.wait(10)
        before = len(polls)
        assert _wait(lambda: len(polls) > before + 5)  # the poll loop is not blocked
        assert world.consumer.tp in world.consumer.paused
        assert world.sample("moderation_videos_in_flight") == 1
        gate.release.set()
        assert _wait(lambda: world.committed() == 1)
        assert _wait(lambda: world.consumer.tp not in world.consumer.paused)
    finally:
        gate.release.set()
        stop.set()
        thread.join(10)


def test_a_video_past_its_deadline_is_dead_lettered_and_the_worker_goes_on(make_pipeline, make_event):
    gate = Gate()
    world = World(make_pipeline(detector=FakeDetector(
        lambda pos: gate(pos) if not gate.release.is_set() and pos == 0 and not gate.entered.is_set() else [FACE])),
        video_deadline_s=0.3, inline=False)
    world.upload(make_event("vid-a", "file:///videos/a.mp4"))
    world.upload(make_event("vid-b", "file:///videos/b.mp4"))
    stop = threading.Event()
    thread = _run_in_thread(world, stop)
    try:
        assert _wait(lambda: world.committed() == 2)
    finally:
        gate.release.set()
        stop.set()
        thread.join(10)
    assert [d["data"]["reason"] for d in world.dead_letters()] == ["timeout"]
    assert [v["data"]["video_id"] for v in world.verdicts()] == ["vid-b"]
    assert world.sample("moderation_video_deadline_exceeded_total") == 1


def test_stop_finishes_the_video_in_flight_commits_and_closes(make_pipeline, make_event):
    gate = Gate()
    world = World(make_pipeline(detector=FakeDetector(gate)), inline=False)
    for name in "ab":
        world.upload(make_event(f"vid-{name}", f"file:///videos/{name}.mp4"))
    stop = threading.Event()
    thread = _run_in_thread(world, stop)
    assert gate.entered.wait(10)
    stop.set()
    time.sleep(0.2)
    gate.release.set()
    thread.join(10)
    assert not thread.is_alive()
    assert [v["data"]["video_id"] for v in world.verdicts()] == ["vid-a"]  # vid-b was not started
    assert world.committed() == 1
    assert world.consumer.closed
    assert world.health.report()[1]["partitions_assigned"] is False


def test_stop_gives_up_on_a_stuck_video_at_the_shutdown_deadline(make_pipeline, make_event):
    gate = Gate()
    world = World(make_pipeline(detector=FakeDetector(gate)), shutdown_deadline_s=0.3, inline=False)
    world.upload(make_event("vid-a", "file:///videos/a.mp4"))
    stop = threading.Event()
    thread = _run_in_thread(world, stop)
    assert gate.entered.wait(10)
    started = time.monotonic()
    stop.set()
    thread.join(10)
    assert time.monotonic() - started < 5
    assert not thread.is_alive() and world.consumer.closed
    assert world.verdicts() == [] and world.committed() is None  # the next owner redoes it
    gate.release.set()


def test_a_hung_device_call_fails_liveness_and_the_next_owner_delivers_each_event_once(
        make_pipeline, make_event):
    """The face detector's first call never returns (until the test lets it, late): the
    videos behind it wait, /livez fails past the deadline, the orchestrator replaces the
    worker, and the replacement delivers every event once; the hung call, when it returns
    at last, publishes nothing (its producer was fenced)."""
    gate = Gate()
    first = threading.Event()

    def hang_once(position):
        if not first.is_set():
            first.set()
            return gate(position)
        return [FACE]

    calls = DeviceCalls()
    world = World(timed(make_pipeline(detector=FakeDetector(hang_once)), calls), inline=False,
                  calls=calls, device_call_deadline_s=0.5)
    for name in "abc":
        world.upload(make_event(f"vid-{name}", f"file:///videos/{name}.mp4"))
    stop_hung = threading.Event()
    errors = []

    def run_hung(runner=world.runner):
        try:
            runner.run(stop_hung)
        except Exception as exc:  # what the fenced zombie raises, kept for the test
            errors.append(exc)
    hung = threading.Thread(target=run_hung, daemon=True)
    hung.start()
    try:
        assert gate.entered.wait(10)
        assert world.health.alive() == (True, "ok")  # running, not yet past the deadline
        assert _wait(lambda: not world.health.alive()[0], timeout=10)
        ok, why = world.health.alive()
        assert "detect_faces model call has been running for" in why and "(deadline 0.5 s)" in why
        assert world.sample("moderation_model_call_running_seconds") > 0.5
        assert world.verdicts() == [] and world.committed() is None  # all three wait behind it

        # The orchestrator restarts the pod: the group rebalances, the new instance (same
        # worker id, so the same transactional id) fences the old producer.
        world.broker.rebalance(KAFKA.group_id)
        world.pipeline = make_pipeline()
        hung_runner, world.runner = world.runner, world.worker()
        gate.release.set()  # the hung call returns at last, to a fenced producer
        hung.join(10)
        assert not hung.is_alive()
        stop_next = threading.Event()
        replacement = _run_in_thread(world, stop_next)
        assert _wait(lambda: world.committed() == 3)
        stop_next.set()
        replacement.join(10)
    finally:
        gate.release.set()
        stop_hung.set()
    assert [type(e) for e in errors] == [Fenced]  # the zombie's late result went nowhere
    assert [v["data"]["source_event_id"] for v in world.verdicts()] == ["evt-vid-a", "evt-vid-b", "evt-vid-c"]
    assert world.dead_letters() == []
    assert calls.oldest() is None and hung_runner is not world.runner


def test_run_survives_a_poll_failure(make_pipeline, make_event):
    world = World(make_pipeline(), inline=False)
    real_poll = world.consumer.poll
    failures = iter([ConnectionError("broker down")])

    def flaky_poll(**kwargs):
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real_poll(**kwargs)

    world.consumer.poll = flaky_poll
    world.upload(make_event())
    stop = threading.Event()
    thread = _run_in_thread(world, stop)
    try:
        assert _wait(lambda: world.committed() == 1)
        assert world.health.report()[1]["kafka_reachable"] is True
    finally:
        stop.set()
        thread.join(10)
    assert len(world.verdicts()) == 1


def test_a_partition_handed_straight_back_in_a_rebalance_loses_nothing(make_pipeline, make_event):
    """kafka-python keeps the position and pause flag of a partition that a rebalance
    revokes and assigns back; the runner rewinds it to its first unfinished record."""
    world = World(make_pipeline())
    for name in "abcd":
        world.upload(make_event(f"vid-{name}", f"file:///videos/{name}.mp4"))
    world.runner.step(world.threads)  # all four fetched, vid-a done, the rest buffered
    assert world.consumer.position_ == 4 and world.consumer.tp in world.consumer.paused
    world.runner.revoke({world.consumer.tp})  # revoked ... and (same consumer) assigned back
    assert world.consumer.position_ == 1 and world.consumer.tp not in world.consumer.paused
    world.settle()
    assert [v["data"]["video_id"] for v in world.verdicts()] == ["vid-a", "vid-b", "vid-c", "vid-d"]
    assert world.committed() == 4


def test_buffered_events_are_not_left_waiting_for_a_full_poll_timeout(make_pipeline, make_event):
    world = World(make_pipeline())
    timeouts = []
    real_poll = world.consumer.poll
    world.consumer.poll = lambda timeout_ms=0, **kw: timeouts.append(timeout_ms) or real_poll(**kw)
    for name in "abc":
        world.upload(make_event(f"vid-{name}", f"file:///videos/{name}.mp4"))
    world.settle(3)
    assert timeouts[0] == KAFKA.poll_timeout_ms  # nothing to do yet: a normal poll
    assert timeouts[1:3] == [50, 50]  # events waiting in the buffer: brief polls
