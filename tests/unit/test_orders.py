"""Legal orders: parsing and deadlines, what executing one writes, and how it fails (the
broker side is tests/integration/test_orders.py)."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client import CollectorRegistry

from worker.bank.entries import parse_entry_record
from worker.bank.fingerprint import VideoFingerprint
from worker.config import ConfigError, load_config
from worker.core.dead_letters import DeadLetter
from worker.core.events import validator
from worker.metrics import WorkerMetrics
from worker.orders.handler import OpenOrders, OrderHandler
from worker.orders.records import order_event, parse_category_hours, parse_order
from worker.runtime.access import required_grants
from worker.runtime.accounting import Latencies, account
from worker.runtime.clocks import LatencyWindow
from worker.runtime.outputs import Outputs
from worker.testing.fakes import FakeRecord

RECEIVED = datetime(2026, 12, 4, 9, 0, 0, tzinfo=timezone.utc)
HASH = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
HASH_LIST = f"0,100,{HASH},0.000\n1,100,{HASH},1.000\n"
VIDEO = {"target_id": "vid-1", "video_id": "vid-1", "video_uri": "https://media.example.com/vid-1.mp4"}
LIST = {"target_id": "list-1", "fingerprint_vpdq": HASH_LIST}


class FakeFingerprinter:
    """Fingerprints a URI it knows; raises the upload's dead letter for one it does not."""

    def __init__(self, known: dict[str, VideoFingerprint]):
        self.known = known
        self.asked: list[str] = []

    def fingerprint(self, uri: str) -> VideoFingerprint:
        self.asked.append(uri)
        if uri not in self.known:
            raise DeadLetter("video_not_found", f"HTTP 404 for {uri}")
        return self.known[uri]


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def record(value: bytes, offset: int = 7) -> FakeRecord:
    return FakeRecord("orders", 0, offset, b"key", value, -1)


def handler(clock: Clock, known=None, **kwargs) -> OrderHandler:
    fingerprints = FakeFingerprinter({VIDEO["video_uri"]: VideoFingerprint.from_vpdq_text(HASH_LIST)}
                                     if known is None else known)
    return OrderHandler("orders", "order-status", "verdicts", "bank", fingerprints, "w-1",
                        by_category={"ncii": 2.0}, now=clock, **kwargs)


def by_topic(records):
    out: dict[str, list] = {}
    for topic, key, value in records:
        out.setdefault(topic, []).append((key, value if value is None else json.loads(value)))
    return out


# --- parsing and deadlines --------------------------------------------------------------------

def test_the_deadline_is_received_plus_three_hours_or_the_category_s_or_the_order_s():
    assert parse_order(order_event("o-1", [VIDEO], RECEIVED), 1 << 20).deadline == RECEIVED + timedelta(hours=3)
    ncii = parse_order(order_event("o-2", [VIDEO], RECEIVED, category="ncii"), 1 << 20, by_category={"ncii": 2})
    assert ncii.deadline == RECEIVED + timedelta(hours=2)
    other = parse_order(order_event("o-3", [VIDEO], RECEIVED, category="defamation"), 1 << 20, 3.0, {"ncii": 2})
    assert other.deadline == RECEIVED + timedelta(hours=3)
    own = parse_order(order_event("o-4", [VIDEO], RECEIVED, deadline=RECEIVED + timedelta(hours=1)), 1 << 20)
    assert own.deadline == RECEIVED + timedelta(hours=1)


@pytest.mark.parametrize("change, reason", [
    (lambda d: d["data"]["targets"].append(dict(VIDEO)), "schema_violation"),       # a target twice
    (lambda d: d["data"]["targets"].clear(), "schema_violation"),
    (lambda d: d["data"]["targets"][0].pop("video_uri"), "schema_violation"),      # a video needs its URI
    (lambda d: d["data"]["authority"].update(kind="police"), "schema_violation"),
    (lambda d: d["data"].update(received_at="2026-12-04T09:00:00"), "schema_violation"),  # no offset
    (lambda d: d.update(type="dev.moderation.legal-order.v2"), "unsupported_schema_version"),
])
def test_a_bad_order_is_a_dead_letter_with_its_reason(change, reason):
    document = json.loads(order_event("o-1", [VIDEO], RECEIVED))
    change(document)
    with pytest.raises(DeadLetter) as caught:
        parse_order(json.dumps(document).encode(), 1 << 20)
    assert caught.value.reason == reason


def test_category_hours_are_read_and_checked():
    assert parse_category_hours(("ncii=2", " csam = 1 ")) == {"ncii": 2.0, "csam": 1.0}
    for bad in (("ncii",), ("=2",), ("ncii=0",), ("ncii=soon",)):
        with pytest.raises(ValueError):
            parse_category_hours(bad)
        with pytest.raises(ConfigError, match="category_deadline_hours"):
            load_config(env={}, overrides=[f"orders.category_deadline_hours={bad[0]}"])
    with pytest.raises(ConfigError, match="needs bank.enabled"):
        load_config(env={}, overrides=["orders.topic=orders", "bank.enabled=false"])


def test_orders_add_their_grants():
    def names(*overrides):
        return {(g.operation, g.name) for g in required_grants(load_config(env={}, overrides=list(overrides)))}
    assert names("orders.topic=legal") - names() == {("READ", "legal"), ("WRITE", "moderation.order-status.v1")}
    assert ("WRITE", "moderation.hash-bank.v1") in names("orders.topic=legal", "bank.add_takedowns=false")


# --- executing an order -----------------------------------------------------------------------

def test_an_order_writes_a_takedown_and_an_entry_per_target_and_one_status():
    clock = Clock(RECEIVED + timedelta(minutes=5))
    applied = handler(clock).handle_record(record(order_event("HC-7", [VIDEO, LIST], RECEIVED)))
    topics = [topic for topic, _, _ in applied.records]
    assert topics == ["verdicts", "bank", "bank", "order-status"]  # the status last
    out = by_topic(applied.records)
    (key, verdict), = out["verdicts"]
    validator("verdict", "1.3").validate(verdict)
    data = verdict["data"]
    assert key == b"vid-1" and (data["decision"], data["reasons"]) == ("takedown", ["legal_order"])
    assert data["legal_order"] == {"order_id": "HC-7", "authority": {"kind": "court", "name": "High Court of Delhi"},
                                   "legal_reference": "IT Rules 2021 r. 3(1)(d)",
                                   "deadline": "2026-12-04T12:00:00.000000Z"}
    assert data["latency_seconds"]["end_to_end"] == pytest.approx(300.0)  # from the order's receipt
    entries = [parse_entry_record(k, json.dumps(v).encode()) for k, v in out["bank"]]
    assert [(e.entry_id, e.bank, e.source_video_id) for e in entries] == [
        ("order:HC-7:vid-1", "positive", "vid-1"), ("order:HC-7:list-1", "positive", None)]
    assert entries[0].fingerprint is not None and entries[1].fingerprint is None  # the list: plain vPDQ
    assert all(e.reason.startswith("legal_order: HC-7") for e in entries)
    (key, status), = out["order-status"]
    validator("order-status").validate(status)
    s = status["data"]
    assert key == b"HC-7" and s["status"] == "done"
    assert s["targets"] == [
        {"target_id": "vid-1", "status": "done", "verdict_id": verdict["id"], "entry_id": "order:HC-7:vid-1"},
        {"target_id": "list-1", "status": "done", "entry_id": "order:HC-7:list-1"}]
    assert (s["elapsed_seconds"], s["deadline_seconds"], s["within_deadline"]) == (300.0, 10800.0, True)
    assert applied.fields["status"] == "done"


def test_a_target_that_fails_is_reported_and_the_others_are_executed():
    clock = Clock(RECEIVED + timedelta(hours=4))  # late, too
    bad_list = {"target_id": "list-2", "fingerprint_vpdq": "not,a,hash,list"}
    gone = dict(VIDEO, target_id="vid-2", video_id="vid-2", video_uri="https://media.example.com/gone.mp4")
    applied = handler(clock).handle_record(record(order_event("HC-8", [gone, VIDEO, bad_list], RECEIVED)))
    out = by_topic(applied.records)
    assert [k for k, _ in out["verdicts"]] == [b"vid-1"]  # no takedown for what could not be executed
    assert [k for k, _ in out["bank"]] == [b"order:HC-8:vid-1"]
    s = out["order-status"][0][1]["data"]
    assert s["status"] == "partial" and s["within_deadline"] is False and s["elapsed_seconds"] == 14400.0
    assert [(t["target_id"], t["status"], t.get("reason")) for t in s["targets"]] == [
        ("vid-2", "failed", "video_not_found"), ("vid-1", "done", None), ("list-2", "failed", "invalid_fingerprint")]
    assert "HTTP 404" in s["targets"][0]["message"]
    nothing = handler(clock, known={}).handle_record(record(order_event("HC-9", [VIDEO], RECEIVED)))
    assert [t for t, _, _ in nothing.records] == ["order-status"]
    assert json.loads(nothing.records[0][2])["data"]["status"] == "failed"


def test_a_redelivered_order_rewrites_the_same_ids():
    value = order_event("HC-7", [VIDEO, LIST], RECEIVED)
    first = handler(Clock(RECEIVED + timedelta(minutes=5))).handle_record(record(value))
    again = handler(Clock(RECEIVED + timedelta(minutes=9))).handle_record(record(value))
    ids = [(t, k, json.loads(v)["id"]) for t, k, v in first.records if t != "bank"]
    assert ids == [(t, k, json.loads(v)["id"]) for t, k, v in again.records if t != "bank"]
    assert [k for t, k, _ in first.records] == [k for t, k, _ in again.records]  # entry ids: the keys
    other = handler(Clock(RECEIVED)).handle_record(record(value, offset=8))
    assert json.loads(other.records[-1][2])["id"] != json.loads(first.records[-1][2])["id"]


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_an_older_verdict_contract_leaves_the_order_out_but_keeps_the_reason(version):
    applied = handler(Clock(RECEIVED), verdict_schema=version).handle_record(
        record(order_event("HC-7", [VIDEO], RECEIVED)))
    data = json.loads(applied.records[0][2])["data"]
    assert data["reasons"] == ["legal_order"] and "legal_order" not in data
    validator("verdict", version).validate(json.loads(applied.records[0][2]))


def test_through_the_outputs_a_bad_order_is_one_dead_letter():
    cfg = load_config(env={}, overrides=["worker.id=w-1"])
    outputs = Outputs(None, cfg.kafka, cfg.worker, side_topics=[handler(Clock(RECEIVED))])
    output = outputs.handle(record(b'{"type": "dev.moderation.legal-order.v1"}'))
    assert output.dead_letter.reason == "schema_violation"
    assert [t for t, _, _ in output.records] == [cfg.kafka.dead_letter_topic]
    good = outputs.handle(record(order_event("HC-7", [VIDEO], RECEIVED)))
    assert good.dead_letter is None and good.applied["order_id"] == "HC-7"


def test_open_orders_say_how_old_the_oldest_is_and_how_much_of_its_deadline_is_gone():
    clock = Clock(RECEIVED + timedelta(minutes=90))
    open_orders = OpenOrders(clock)
    assert (open_orders.count(), open_orders.oldest_seconds(), open_orders.deadline_share()) == (0, 0.0, 0.0)
    three_hours = parse_order(order_event("o-1", [VIDEO], RECEIVED), 1 << 20)
    two_hours = parse_order(order_event("o-2", [VIDEO], RECEIVED + timedelta(minutes=30), category="ncii"),
                            1 << 20, by_category={"ncii": 2})
    first, second = open_orders.start(three_hours), open_orders.start(two_hours)
    assert open_orders.count() == 2 and open_orders.oldest_seconds() == 5400.0
    assert open_orders.deadline_share() == pytest.approx(0.5)  # 60 of 120 min, 90 of 180 min
    clock.now += timedelta(minutes=18)
    assert open_orders.deadline_share() == pytest.approx(78 / 120)
    open_orders.finish(second)
    assert open_orders.deadline_share() == pytest.approx(108 / 180)
    open_orders.finish(first)
    assert open_orders.count() == 0


def test_an_order_is_open_while_it_runs_and_counted_once_delivered():
    seen = []
    clock = Clock(RECEIVED + timedelta(minutes=5))
    open_orders = OpenOrders(clock)

    class Watching(FakeFingerprinter):
        def fingerprint(self, uri):
            seen.append(open_orders.count())
            return super().fingerprint(uri)

    fingerprints = Watching({VIDEO["video_uri"]: VideoFingerprint.from_vpdq_text(HASH_LIST)})
    orders = OrderHandler("orders", "order-status", "verdicts", "bank", fingerprints, "w-1", now=clock,
                          open_orders=open_orders)
    cfg = load_config(env={}, overrides=["worker.id=w-1"])
    outputs = Outputs(None, cfg.kafka, cfg.worker, side_topics=[orders])
    source = record(order_event("HC-7", [VIDEO], RECEIVED))
    output = outputs.handle(source)
    assert seen == [1] and open_orders.count() == 0
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    account(output, source, metrics, "w-1", clock.now, Latencies(metrics, LatencyWindow.of(cfg.worker)))
    assert registry.get_sample_value("moderation_orders_total", {"status": "done", "within_deadline": "true"}) == 1
    assert registry.get_sample_value("moderation_order_completion_seconds_sum") == 300.0


def test_targets_past_the_budget_fail_as_timeout_and_the_status_still_goes_out(monkeypatch):
    ticks = iter(range(0, 1000, 100))  # each perf_counter call 100 s later
    monkeypatch.setattr("worker.orders.handler.time.perf_counter", lambda: float(next(ticks)))
    second = dict(VIDEO, target_id="vid-2", video_id="vid-2")
    applied = handler(Clock(RECEIVED), budget_s=150).handle_record(
        record(order_event("HC-7", [VIDEO, second, LIST], RECEIVED)))
    status = json.loads(applied.records[-1][2])["data"]
    assert [(t["target_id"], t["status"], t.get("reason")) for t in status["targets"]] == [
        ("vid-1", "done", None), ("vid-2", "failed", "timeout"), ("list-1", "failed", "timeout")]
    assert status["status"] == "partial"


def test_the_demo_says_when_a_step_did_not_show_what_it_should():
    from worker.testing.demo import ORDER_ID, ORDERED, _check

    def verdict(video_id, **data):
        return {"type": "dev.moderation.verdict.v1", "data": {"video_id": video_id, **data}}

    labelled = verdict("ai-credentials", label={"status": "apply"})
    status = {"type": "dev.moderation.order-status.v1", "data": {"status": "done"}}
    takedown = verdict(ORDERED, legal_order={"order_id": ORDER_ID})
    caught = verdict("reupload", known_content={"entry_id": f"order:{ORDER_ID}:{ORDERED}"})
    assert _check([labelled], 1, [takedown, status], [caught]) == []
    assert _check([verdict("ai-credentials", label={"status": "none"})], 1, [takedown, status], [caught]) == [
        "the upload with AI credentials was not labelled"]
    assert _check([labelled], 2, [status], [verdict("reupload")]) == [
        "1 of 2 upload results came", "the order was not executed",
        "the re-upload was not caught by the order's bank entry"]
