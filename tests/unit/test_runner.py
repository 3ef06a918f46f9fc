"""The consume loop on an in-memory broker: one output per input, commit after publish."""
from __future__ import annotations

import base64
import json
import threading
import time
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry

from worker.config import KafkaConfig
from worker.errors import DeadLetter
from worker.fakes import FakeBroker, FakeClassifier, FakeConsumer, FakeDetector, FakeProducer
from worker.metrics import Health, WorkerMetrics
from worker.runner import Runner

from .conftest import FACE, UPLOADED_AT, VIDEOS

KAFKA = KafkaConfig()
NOW = UPLOADED_AT + timedelta(seconds=7.5)
TRUNCATED = DeadLetter("video_truncated", "moov box missing")


class World:
    """A broker, one worker on it, and its metrics."""

    def __init__(self, pipeline, group_id: str = KAFKA.group_id):
        self.broker = FakeBroker()
        self.registry = CollectorRegistry()
        self.metrics = WorkerMetrics(self.registry)
        self.health = Health(self.metrics)
        self.pipeline = pipeline
        self.group_id = group_id
        self.runner = self.worker()

    def worker(self) -> Runner:
        self.consumer = FakeConsumer(self.broker, KAFKA.upload_topic, self.group_id)
        self.producer = FakeProducer(self.broker)
        return Runner(self.consumer, self.producer, self.pipeline, KAFKA, "worker-1",
                      self.metrics, self.health, now=lambda: NOW)

    def upload(self, value: bytes | None, key: bytes | None = None) -> int:
        return self.broker.append(KAFKA.upload_topic, value, key).offset

    def step(self, max_records: int = 500) -> int:
        return self.runner.process_batch(self.consumer.poll(max_records=max_records))

    def verdicts(self) -> list[dict]:
        return [json.loads(v) for v in self.broker.values(KAFKA.verdict_topic)]

    def dead_letters(self) -> list[dict]:
        return [json.loads(v) for v in self.broker.values(KAFKA.dead_letter_topic)]

    def committed(self) -> int | None:
        return self.broker.committed.get((self.group_id, self.consumer.tp))

    def sample(self, name: str, **labels) -> float | None:
        return self.registry.get_sample_value(name, labels)


@pytest.fixture
def world(make_pipeline):
    table = {**VIDEOS, "file:///videos/truncated.mp4": TRUNCATED}
    return World(make_pipeline(table=table))


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
    assert world.step() == 8

    found = outputs_by_offset(world, inputs)
    assert {offset: [kind for kind, _ in outs] for offset, outs in found.items()} == {
        0: ["verdict"], 1: ["invalid_json"], 2: ["verdict"], 3: ["schema_violation"],
        4: ["video_truncated"], 5: ["invalid_json"], 6: ["video_not_found"], 7: ["verdict"]}
    assert len(world.verdicts()) == 3 and len(world.dead_letters()) == 5
    assert world.consumer.commits == [1, 2, 3, 4, 5, 6, 7, 8]
    assert world.committed() == 8

    verdict_keys = [r.key for r in world.broker.logs[KAFKA.verdict_topic]]
    assert verdict_keys == [b"vid-a", b"vid-b", b"vid-c"]
    assert all(v["data"]["decision"] == "takedown" for v in world.verdicts())
    assert found[0][0][1]["data"]["latency_seconds"]["end_to_end"] == pytest.approx(7.5)

    not_json = found[1][0][1]["data"]
    assert base64.b64decode(not_json["original_value_base64"]) == b"this is not json"
    assert base64.b64decode(not_json["original_key_base64"]) == b"k-1"
    assert world.broker.logs[KAFKA.dead_letter_topic][0].key == b"k-1"
    truncated = found[4][0][1]
    assert (truncated["subject"], truncated["data"]["video_id"], truncated["data"]["source_event_id"]) == (
        "vid-t", "vid-t", "evt-vid-t")
    assert truncated["data"]["message"] == "moov box missing"


def test_metrics_count_decisions_and_dead_letters(world, make_event):
    for name in "abc":
        world.upload(make_event(f"vid-{name}", f"file:///videos/{name}.mp4"))
    world.upload(b"{")
    world.upload(b"[]")
    world.upload(make_event("vid-t", "file:///videos/truncated.mp4"))
    world.step()
    assert world.sample("moderation_decisions_total", decision="takedown") == 3
    assert world.sample("moderation_decisions_total", decision="allow") is None
    assert world.sample("moderation_dead_letters_total", reason="invalid_json") == 1
    assert world.sample("moderation_dead_letters_total", reason="schema_violation") == 1
    assert world.sample("moderation_dead_letters_total", reason="video_truncated") == 1
    assert world.sample("moderation_events_consumed_total") == 6
    assert world.sample("moderation_faces_detected_total") == 3 * 5
    assert world.sample("moderation_end_to_end_latency_seconds_count") == 3
    assert world.sample("moderation_end_to_end_latency_seconds_sum") == pytest.approx(3 * 7.5)
    assert world.sample("moderation_stage_duration_seconds_count", stage="publish") == 6
    assert world.sample("moderation_stage_duration_seconds_count", stage="classify") == 3
    assert world.sample("moderation_videos_in_flight") == 0


def test_a_publish_failure_leaves_the_offset_uncommitted_and_retries(world, make_event):
    for name in "abc":
        world.upload(make_event(f"vid-{name}", f"file:///videos/{name}.mp4"))
    world.broker.fail_next_sends = 1
    assert world.step() == 0
    assert world.verdicts() == [] and world.consumer.commits == [] and world.committed() is None
    assert world.consumer.position == 0  # rewound to the event that was not acknowledged
    assert world.sample("moderation_publish_failures_total") == 1

    assert world.step() == 3
    assert [v["data"]["video_id"] for v in world.verdicts()] == ["vid-a", "vid-b", "vid-c"]
    assert world.committed() == 3
    assert world.sample("moderation_decisions_total", decision="takedown") == 3


def test_a_publish_failure_mid_batch_rewinds_only_the_rest(world, make_event):
    for name in "abcd":
        world.upload(make_event(f"vid-{name}", f"file:///videos/{name}.mp4"))
    assert world.step(max_records=1) == 1
    world.broker.fail_next_sends = 1
    assert world.step() == 0
    assert world.consumer.position == 1 and world.committed() == 1
    assert world.step() == 3
    assert [v["data"]["video_id"] for v in world.verdicts()] == ["vid-a", "vid-b", "vid-c", "vid-d"]
    assert world.consumer.commits == [1, 2, 3, 4]


def test_a_failed_dead_letter_publish_is_retried_too(world):
    world.upload(b"not json")
    world.broker.fail_next_sends = 1
    assert world.step() == 0 and world.dead_letters() == []
    assert world.step() == 1
    assert [d["data"]["source_offset"] for d in world.dead_letters()] == [0]


def test_a_restarted_worker_resumes_after_the_committed_offset(world, make_event):
    world.upload(make_event("vid-a", "file:///videos/a.mp4"))
    world.upload(make_event("vid-b", "file:///videos/b.mp4"))
    assert world.step() == 2
    world.runner.close()
    assert world.consumer.closed and world.producer.closed

    world.upload(make_event("vid-c", "file:///videos/c.mp4"))
    world.runner = world.worker()  # a new consumer in the same group
    assert world.consumer.position == 2
    assert world.step() == 1
    assert [v["data"]["video_id"] for v in world.verdicts()] == ["vid-a", "vid-b", "vid-c"]
    assert world.committed() == 3


def test_another_group_reads_from_the_start(world, make_event):
    world.upload(make_event())
    world.step()
    other = FakeConsumer(world.broker, KAFKA.upload_topic, "another-group")
    assert other.position == 0


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
    assert world.step() == 2

    [letter] = world.dead_letters()
    assert letter["data"]["reason"] == "internal_error"
    assert "RuntimeError" in letter["data"]["message"] and "detector exploded" in letter["data"]["message"]
    assert (letter["data"]["source_offset"], letter["data"]["video_id"]) == (0, "vid-a")
    assert [v["data"]["video_id"] for v in world.verdicts()] == ["vid-b"]
    assert world.committed() == 2
    assert world.sample("moderation_dead_letters_total", reason="internal_error") == 1
    assert world.sample("moderation_decisions_total", decision="takedown") == 1


def test_a_verdict_that_breaks_the_contract_is_never_published(make_pipeline, make_event):
    world = World(make_pipeline(classifier=FakeClassifier(lambda pos, box: 1.5)))
    world.upload(make_event())
    assert world.step() == 1
    assert world.verdicts() == []
    assert [d["data"]["reason"] for d in world.dead_letters()] == ["internal_error"]


def test_a_failed_commit_does_not_stop_the_worker(world, make_event, monkeypatch):
    def lost_partition(offsets):
        raise RuntimeError("CommitFailedError: the group rebalanced")

    monkeypatch.setattr(world.consumer, "commit", lost_partition)
    world.upload(make_event("vid-a", "file:///videos/a.mp4"))
    world.upload(make_event("vid-b", "file:///videos/b.mp4"))
    assert world.step() == 2
    assert len(world.verdicts()) == 2 and world.committed() is None


def test_stop_before_a_record_rewinds_it_for_the_next_owner(world, make_event):
    world.upload(make_event("vid-a", "file:///videos/a.mp4"))
    world.upload(make_event("vid-b", "file:///videos/b.mp4"))
    stop = threading.Event()
    stop.set()
    assert world.runner.process_batch(world.consumer.poll(), stop) == 0
    assert world.consumer.position == 0 and world.verdicts() == []


def test_run_until_stopped_then_close(world, make_event):
    for name in "abc":
        world.upload(make_event(f"vid-{name}", f"file:///videos/{name}.mp4"))
    world.upload(b"not json")
    stop = threading.Event()
    thread = threading.Thread(target=world.runner.run, args=(stop,), kwargs={"retry_backoff_s": 0.01})
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while world.committed() != 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert world.committed() == 4
        assert world.health.report()[1]["kafka_reachable"] is True
        assert world.health.report()[1]["partitions_assigned"] is True
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert world.consumer.closed and world.producer.closed
    assert world.health.report()[1]["partitions_assigned"] is False
    assert len(world.verdicts()) == 3 and len(world.dead_letters()) == 1


def test_run_survives_a_poll_failure(world, make_event, monkeypatch):
    real_poll = world.consumer.poll
    failures = iter([ConnectionError("broker down")])

    def flaky_poll(**kwargs):
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real_poll(**kwargs)

    monkeypatch.setattr(world.consumer, "poll", flaky_poll)
    world.upload(make_event())
    stop = threading.Event()
    thread = threading.Thread(target=world.runner.run, args=(stop,), kwargs={"retry_backoff_s": 0.01})
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while world.committed() != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert world.committed() == 1 and len(world.verdicts()) == 1
