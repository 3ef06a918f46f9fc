"""Reviewer confirmations: parsed strictly, turned into bank-topic records, and delivered with
their offset in one transaction, or dead-lettered with a reason code."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client import CollectorRegistry

from worker.bank.confirmations import (CONFIRMATION_TYPE, ConfirmationHandler, VideoFingerprinter,
                                       automatic_entry_id, parse_confirmation, reviewed_entry_id)
from worker.bank.entries import parse_entry_record, takedown_entry
from worker.config import KafkaConfig, WorkerConfig
from worker.core.dead_letters import DeadLetter
from worker.core.events import SCHEMA_DIR, SourcePosition
from worker.metrics import Health, WorkerMetrics
from worker.runtime.delivery import ExactlyOnce
from worker.runtime.outputs import Outputs
from worker.runtime.runner import Runner
from worker.testing.fakes import (FakeBroker, FakeConsumer, FakeFetcher, FakeProducer, FakeSampler,
                          InlineThreads)

from .conftest import VIDEOS

TOPIC, BANK = "confirmations", "bank"
DECIDED = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
VPDQ = ("0,100,d8f8f0cce0f4a84f8c3b6a7d3e2a1c0f9b8a7c6d5e4f30211203948576a5b4c3,0.000\n"
        "1,96,d8f8f0cce0f4a84f8c3b6a7d3e2a1c0f9b8a7c6d5e4f30211203948576a5b4c7,1.000\n")


def confirmation(decision: str = "confirmed_takedown", video_id: str = "vid-a", **data) -> bytes:
    body = {"video_id": video_id, "decision": decision, "reviewer": "reviewer:ana",
            "reason": "checked against the original", "decided_at": DECIDED.isoformat(), **data}
    return json.dumps({"specversion": "1.0", "id": str(uuid.uuid4()), "source": "urn:review-tool",
                       "type": CONFIRMATION_TYPE, "time": DECIDED.isoformat(), "subject": video_id,
                       "datacontenttype": "application/json", "data": body}).encode()


def handler(table=VIDEOS) -> ConfirmationHandler:
    fingerprinter = VideoFingerprinter(FakeFetcher(table), FakeSampler(frame_count=100, fps=25.0,
                                                                       hash_frames=True))
    return ConfirmationHandler(TOPIC, BANK, fingerprinter, max_event_bytes=64 * 1024)


def changes(records) -> list[tuple[str, str | None]]:
    """(entry id, bank) of each record; bank None for a tombstone."""
    out = []
    for topic, key, value in records:
        assert topic == BANK
        entry = parse_entry_record(key, value)
        out.append((entry, None) if isinstance(entry, str) else (entry.entry_id, entry.bank))
    return out


@pytest.mark.parametrize("name", ["reviewer-confirmation.json", "reviewer-confirmation-allow-from-verdict.json"])
def test_the_schema_examples_are_read(name):
    raw = (SCHEMA_DIR / "examples" / name).read_bytes()
    parsed = parse_confirmation(raw, len(raw))
    assert parsed.video_id == json.loads(raw)["data"]["video_id"]


@pytest.mark.parametrize("value, reason", [
    (None, "invalid_json"),
    (b"{not json", "invalid_json"),
    (b"x" * 70_000, "event_too_large"),
    (confirmation(decision="escalated"), "schema_violation"),
    (confirmation(), "schema_violation"),  # a takedown needs video_uri or fingerprint_vpdq
    (confirmation(video_uri="ftp://host/a.mp4"), "schema_violation"),
    (confirmation(fingerprint_vpdq="0,100,nothex,0.0\n"), "schema_violation"),
    (confirmation(video_uri="file:///videos/missing.mp4"), "video_not_found"),
    (confirmation(decided_at="2026-11-28T12:00:00"), "schema_violation"),  # no UTC offset
    (confirmation(fingerprint_vpdq=VPDQ).replace(CONFIRMATION_TYPE.encode(),
                                                 b"dev.moderation.reviewer-confirmation.v2"),
     "unsupported_schema_version"),
])
def test_bad_confirmations_are_refused_with_a_reason(value, reason):
    with pytest.raises(DeadLetter) as info:
        handler().handle(value)
    assert info.value.reason == reason


def test_a_confirmed_takedown_adds_the_re_fingerprinted_video_to_the_positive_bank():
    parsed, records = handler().handle(confirmation(video_uri="file:///videos/a.mp4"))
    assert changes(records) == [(reviewed_entry_id("vid-a", "positive"), "positive"),
                                (reviewed_entry_id("vid-a", "negative"), None)]
    entry = parse_entry_record(*records[0][1:])
    assert entry.fingerprint is not None  # re-fingerprinted: the robustness hashes too
    assert entry.fingerprint_vpdq.count("\n") == 4  # the fake's one hash frame a second, 4 s
    assert (entry.source_video_id, entry.added_by, entry.added_at) == ("vid-a", "reviewer:ana", DECIDED)
    assert entry.reason.startswith("confirmed_takedown: ") and parsed.reviewer == "reviewer:ana"


def test_a_confirmed_allow_from_the_verdicts_fingerprint_goes_to_the_negative_bank():
    _, records = handler().handle(confirmation("confirmed_allow", fingerprint_vpdq=VPDQ))
    assert changes(records) == [(reviewed_entry_id("vid-a", "negative"), "negative"),
                                (automatic_entry_id("vid-a"), None),
                                (reviewed_entry_id("vid-a", "positive"), None)]
    entry = parse_entry_record(*records[0][1:])
    assert entry.fingerprint_vpdq == VPDQ and entry.fingerprint is None


def test_a_rejection_removes_the_automatic_entry_and_the_named_one():
    _, records = handler().handle(confirmation("rejected", entry_id="review-positive:vid-src"))
    assert changes(records) == [(automatic_entry_id("vid-a"), None),
                                (reviewed_entry_id("vid-a", "positive"), None),
                                ("review-positive:vid-src", None)]


def test_the_automatic_entry_of_a_takedown_is_named_after_the_video():
    entry = takedown_entry("vid-a", VPDQ, "w1", DECIDED)
    assert entry.entry_id == automatic_entry_id("vid-a")


def test_the_runner_delivers_a_confirmation_with_its_offset_in_one_transaction():
    """The same path as an upload: the records and the offset commit, or a dead letter."""
    broker = FakeBroker()
    kafka = KafkaConfig()
    metrics = WorkerMetrics(CollectorRegistry())
    delivery = ExactlyOnce(lambda: FakeProducer(broker, "tx-1"), 1.0)
    consumer = FakeConsumer(broker, TOPIC, kafka.group_id)
    outputs = Outputs(None, kafka, WorkerConfig(id="w1"), side_topics=[handler()],
                      now=lambda: DECIDED + timedelta(seconds=1))
    runner = Runner(consumer, delivery, outputs, kafka, WorkerConfig(id="w1"), metrics, Health(metrics))
    runner.start()
    broker.append(TOPIC, confirmation("rejected"), b"vid-a")
    broker.append(TOPIC, b"{not json", b"vid-b")
    threads = InlineThreads(runner.outputs.handle)
    for _ in range(5):
        runner.step(threads)
    assert [(r.key, r.value) for r in broker.logs[BANK]] == [
        (automatic_entry_id("vid-a").encode(), None), (reviewed_entry_id("vid-a", "positive").encode(), None)]
    [dead] = [json.loads(v) for v in broker.values(kafka.dead_letter_topic)]
    assert (dead["data"]["reason"], dead["data"]["source_topic"], dead["data"]["source_offset"]) == (
        "invalid_json", TOPIC, 1)
    assert broker.committed[(kafka.group_id, consumer.tp)] == 2
    assert broker.values(kafka.verdict_topic) == []
