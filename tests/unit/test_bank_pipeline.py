"""The hash bank in the pipeline and the runner, on in-memory fakes."""
from __future__ import annotations

import json

from worker.bank.entries import parse_entry_record
from worker.bank.takedowns import TakedownRecords
from worker.core.policy import KnownContentMatch
from worker.testing.fakes import FakeBank, FakeDetector, FakeSampler

from .conftest import FACE
from .test_runner import KAFKA, NOW, World

MATCH = KnownContentMatch("entry-1", "vid-original", 93.0, 85.0, 7.0)


class CountingDetector(FakeDetector):
    def __init__(self):
        super().__init__([FACE])
        self.calls = 0

    def detect(self, frames):
        self.calls += 1
        return super().detect(frames)


def test_a_bank_match_is_a_takedown_without_waiting_for_the_models(make_pipeline, make_event):
    from worker.core.events import parse_upload_event

    detector = CountingDetector()
    pipeline = make_pipeline(sampler=FakeSampler(hash_frames=True), detector=detector, bank=FakeBank(MATCH))
    verdict = pipeline.process(parse_upload_event(make_event(), 1 << 20))
    assert (verdict.decision, verdict.reasons) == ("takedown", ("known_content_match",))
    assert verdict.known_content == MATCH
    assert detector.calls == 0 and verdict.tracks == ()
    # A model is loaded, but it did not run: the verdict must not name it nor carry a score.
    assert verdict.model is None and verdict.video_score is None
    assert "hash_match" in verdict.stage_seconds and "detect_faces" not in verdict.stage_seconds
    assert verdict.fingerprint.count("\n") == 3  # 4 hash frames: one a second of a 4 s clip


def test_no_match_goes_on_to_the_models_and_keeps_the_fingerprint(make_pipeline, make_event):
    from worker.core.events import parse_upload_event

    pipeline = make_pipeline(sampler=FakeSampler(hash_frames=True), bank=FakeBank(None))
    verdict = pipeline.process(parse_upload_event(make_event(), 1 << 20))
    assert verdict.reasons == ("score_at_or_above_takedown_threshold",)
    assert verdict.known_content is None and verdict.fingerprint


def _bank_world(make_pipeline, match=None) -> World:
    world = World(make_pipeline(sampler=FakeSampler(hash_frames=True), bank=FakeBank(match)))
    world.runner.outputs.hooks = [TakedownRecords("worker-1", bank_topic="bank.v1", now=lambda: NOW)]
    return world


def test_a_model_takedown_adds_its_fingerprint_to_the_bank_in_the_same_transaction(make_pipeline, make_event):
    world = _bank_world(make_pipeline)
    world.upload(make_event("vid-a", "file:///videos/a.mp4"))
    world.broker.fail_next_commits = 1  # the first transaction aborts: nothing may show
    world.runner.step(world.threads)
    assert world.broker.logs["bank.v1"] == [] and world.verdicts() == []
    world.settle()
    [record] = world.broker.logs["bank.v1"]
    entry = parse_entry_record(record.key, record.value)
    assert entry.bank == "positive" and entry.source_video_id == "vid-a"
    assert entry.fingerprint_vpdq == world.verdicts()[0]["data"]["fingerprint_vpdq"]


def test_a_known_content_takedown_adds_no_second_entry(make_pipeline, make_event):
    world = _bank_world(make_pipeline, MATCH)
    world.upload(make_event("vid-b", "file:///videos/b.mp4"))
    world.settle()
    assert world.broker.logs["bank.v1"] == []
    data = world.verdicts()[0]["data"]
    assert data["known_content"]["entry_id"] == "entry-1"
    assert data["reasons"] == ["known_content_match"]


def test_without_a_bank_topic_nothing_is_added(make_pipeline, make_event):
    world = World(make_pipeline(sampler=FakeSampler(hash_frames=True), bank=FakeBank(None)))
    world.upload(make_event("vid-a", "file:///videos/a.mp4"))
    world.settle()
    assert "bank.v1" not in world.broker.logs and len(world.verdicts()) == 1
    assert json.loads(world.broker.values(KAFKA.verdict_topic)[0])["data"]["decision"] == "takedown"


def test_a_matched_uploads_score_follows_the_verdict_exactly_once(make_pipeline, make_event):
    """The verdict goes out at once, without the models, and queues the upload in the same
    transaction; a worker consuming the queue publishes the score after it."""
    from prometheus_client import CollectorRegistry

    from worker.bank.scoring import MATCH_SCORE_TYPE, MatchScoring
    from worker.config import WorkerConfig
    from worker.metrics import Health, WorkerMetrics
    from worker.runtime.delivery import ExactlyOnce
    from worker.runtime.outputs import Outputs
    from worker.runtime.runner import Runner
    from worker.testing.fakes import FakeConsumer, FakeProducer, InlineThreads

    from .test_runner import NOW

    detector = CountingDetector()
    world = World(make_pipeline(sampler=FakeSampler(hash_frames=True), detector=detector,
                                bank=FakeBank(MATCH)))
    world.runner.outputs.hooks = [TakedownRecords("worker-1", score_topic="score.v1", now=lambda: NOW)]
    upload = make_event("vid-b", "file:///videos/b.mp4")
    world.upload(upload)
    world.broker.fail_next_commits = 1  # the first transaction aborts: neither record shows
    world.runner.step(world.threads)
    assert world.verdicts() == [] and world.broker.values("score.v1") == []
    world.settle()
    [verdict] = world.verdicts()
    assert verdict["data"]["reasons"] == ["known_content_match"]
    assert verdict["data"]["video_score"] is None and detector.calls == 0  # nothing waited
    assert world.broker.values("score.v1") == [upload]

    models_only = make_pipeline(sampler=FakeSampler(hash_frames=True), detector=detector)
    metrics = WorkerMetrics(CollectorRegistry())
    consumer = FakeConsumer(world.broker, "score.v1", KAFKA.group_id)
    outputs = Outputs(models_only, KAFKA, WorkerConfig(id="worker-2"), now=lambda: NOW,
                      side_topics=[MatchScoring("score.v1", KAFKA.verdict_topic, models_only, "worker-2")])
    scorer = Runner(consumer, ExactlyOnce(lambda: FakeProducer(world.broker, "tx-2"), 1.0),
                    outputs, KAFKA, WorkerConfig(id="worker-2"), metrics, Health(metrics))
    scorer.start()
    threads = InlineThreads(scorer.outputs.handle)
    for _ in range(5):
        scorer.step(threads)
    records = [json.loads(v) for v in world.broker.values(KAFKA.verdict_topic)]
    assert [r["type"] for r in records] == ["dev.moderation.verdict.v1", MATCH_SCORE_TYPE]
    score = records[1]
    assert world.broker.logs[KAFKA.verdict_topic][1].key == b"vid-b" and score["subject"] == "vid-b"
    assert score["data"]["source_event_id"] == verdict["data"]["source_event_id"]
    assert (score["data"]["video_score"], score["data"]["model_decision"]) == (0.95, "takedown")
    assert detector.calls == 1
    assert world.broker.committed[(KAFKA.group_id, consumer.tp)] == 1
    # a queued event whose video is gone by then is a dead letter, as an upload would be
    world.broker.append("score.v1", make_event("vid-x", "file:///videos/gone.mp4"), b"vid-x")
    for _ in range(5):
        scorer.step(threads)
    [dead] = [json.loads(v) for v in world.broker.values(KAFKA.dead_letter_topic)]
    assert (dead["data"]["reason"], dead["data"]["source_topic"]) == ("video_not_found", "score.v1")
    assert world.broker.committed[(KAFKA.group_id, consumer.tp)] == 2


def test_match_scoring_refuses_a_pipeline_with_the_bank(make_pipeline):
    import pytest

    from worker.bank.scoring import MatchScoring

    with pytest.raises(ValueError):
        MatchScoring("score.v1", KAFKA.verdict_topic, make_pipeline(bank=FakeBank(MATCH)), "w")


def _densifier_runner(world, make_pipeline, holds, wait_s=0.0):
    from prometheus_client import CollectorRegistry

    from worker.bank.confirmations import VideoFingerprinter
    from worker.bank.densify import TakedownDensifier
    from worker.bank.fingerprint import HashingConfig
    from worker.config import WorkerConfig
    from worker.metrics import Health, WorkerMetrics
    from worker.runtime.delivery import ExactlyOnce
    from worker.runtime.outputs import Outputs
    from worker.runtime.runner import Runner
    from worker.testing.fakes import FakeConsumer, FakeFetcher, FakeProducer, InlineThreads

    from .conftest import VIDEOS
    from .test_runner import NOW

    # 30 hash frames a second: the entry sampler (bank.entry_hash_rate_hz)
    fingerprinter = VideoFingerprinter(FakeFetcher(VIDEOS), FakeSampler(frame_count=100, fps=25.0, hash_frames=True),
                                       HashingConfig(seconds_per_hash=0))
    densifier = TakedownDensifier("densify.v1", "bank.v1", fingerprinter, holds, "worker-2",
                                  wait_s=wait_s, now=lambda: NOW, sleep=lambda s: None)
    metrics = WorkerMetrics(CollectorRegistry())
    consumer = FakeConsumer(world.broker, "densify.v1", KAFKA.group_id)
    outputs = Outputs(make_pipeline(), KAFKA, WorkerConfig(id="worker-2"), side_topics=[densifier],
                      now=lambda: NOW)
    runner = Runner(consumer, ExactlyOnce(lambda: FakeProducer(world.broker, "tx-2"), 1.0),
                    outputs, KAFKA, WorkerConfig(id="worker-2"), metrics, Health(metrics))
    runner.start()
    return runner, consumer, InlineThreads(runner.outputs.handle)


def test_a_takedowns_entry_is_written_again_densely_after_the_verdict(make_pipeline, make_event):
    world = _bank_world(make_pipeline)
    world.runner.outputs.hooks = [TakedownRecords("worker-1", bank_topic="bank.v1",
                                                  densify_topic="densify.v1", now=lambda: NOW)]
    upload = make_event("vid-a", "file:///videos/a.mp4")
    world.upload(upload)
    world.broker.fail_next_commits = 1  # the first transaction aborts: none of the three shows
    world.runner.step(world.threads)
    assert world.broker.logs["bank.v1"] == [] and world.broker.values("densify.v1") == []
    world.settle()
    assert world.broker.values("densify.v1") == [upload]
    [first] = world.broker.logs["bank.v1"]
    assert first.key == b"takedown:vid-a"

    held = {"takedown:vid-a"}
    runner, consumer, threads = _densifier_runner(world, make_pipeline, held.__contains__)
    for _ in range(5):
        runner.step(threads)
    first_entry, dense = (parse_entry_record(r.key, r.value) for r in world.broker.logs["bank.v1"])
    assert world.broker.logs["bank.v1"][1].key == b"takedown:vid-a"  # the same entry, replaced
    assert dense.source_video_id == "vid-a" and dense.reason == "takedown_verdict"
    assert dense.fingerprint and dense.added_by == "worker:worker-2"
    assert world.broker.committed[(KAFKA.group_id, consumer.tp)] == 1
    assert world.broker.values(KAFKA.dead_letter_topic) == []

    # a takedown whose entry was removed meanwhile (a reviewer rejected it) is not brought back
    held.clear()
    world.broker.append("densify.v1", upload, b"vid-a")
    for _ in range(5):
        runner.step(threads)
    assert len(world.broker.logs["bank.v1"]) == 2
    [dead] = [json.loads(v) for v in world.broker.values(KAFKA.dead_letter_topic)]
    assert (dead["data"]["reason"], dead["data"]["source_topic"]) == ("bank_entry_gone", "densify.v1")
    assert world.broker.committed[(KAFKA.group_id, consumer.tp)] == 2


def test_the_densifier_waits_for_its_bank_to_catch_up():
    """The entry and the queued record were written in one transaction, but this worker's
    follower may not have applied the entry yet: the densifier looks again until it has."""
    import numpy as np

    from worker.bank.densify import TakedownDensifier
    from worker.bank.fingerprint import fingerprint_entry
    from worker.core.events import upload_event
    from worker.testing.fakes import FakeRecord

    rng = np.random.default_rng(5)
    frames = [np.kron(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8), np.ones((16, 16, 1), np.uint8))
              for _ in range(3)]

    class Fingerprinter:
        def fingerprint(self, uri):
            return fingerprint_entry(frames, [0.0, 1.0, 2.0])

    looks = []

    def holds(entry_id):
        looks.append(entry_id)
        return len(looks) >= 3  # the follower applies the entry before the third look

    record = FakeRecord("d", 0, 0, b"vid-z", upload_event("vid-z", "file:///videos/z.mp4", "uploader-1"))
    densifier = TakedownDensifier("d", "b", Fingerprinter(), holds, "w", wait_s=60.0, sleep=lambda s: None)
    fields, [(topic, key, value)] = densifier.handle_record(record)
    assert (topic, key, fields["frames"]) == ("b", b"takedown:vid-z", 3)
    assert looks == ["takedown:vid-z"] * 3
