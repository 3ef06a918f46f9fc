"""Legal orders through the real broker: an order with a video, a hash list and a video that
cannot be fetched is executed once (takedown verdict, bank entries, one status record), a
re-encode of the ordered video is caught by the bank and names the order's entry, and a bad
order is one dead letter."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client import CollectorRegistry

from worker.core.events import validator
from worker.orders.records import order_event
from worker.runtime.clients import client_options, ensure_topics
from worker.testing.samples import sample_video

from .conftest import drain, publish, read_outputs, running_worker
from .test_bank_kafka import wait_for_bank_entries
from .test_bank_variants import build_variant, decode_all
from .test_kafka_roundtrip import _event

pytestmark = pytest.mark.kafka

HASH = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"


def committed(cfg, topic: str, expected: int, timeout_s: float = 120.0, settle_s: float = 2.0) -> list:
    """(key, value) of the committed records of ``topic`` once ``expected`` arrived and nothing more came."""
    consumer = KafkaConsumer(topic, isolation_level="read_committed", auto_offset_reset="earliest",
                             enable_auto_commit=False, **client_options(cfg.kafka))
    return [(key, value) for _, key, value in drain(consumer, expected, timeout_s, settle_s)]


def send(cfg, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap_servers, acks="all")
    try:
        for key, value in values:
            producer.send(topic, key=key, value=value).get(timeout=30)
    finally:
        producer.close()


def test_an_order_is_executed_once_and_its_re_encode_is_caught(kafka_config, pipeline_without_model, tmp_path):
    source = sample_video("carphone_pristine.mp4")
    frames, rate = decode_all(source)
    reencode = build_variant(source, frames, rate, "reencode", tmp_path)
    cfg = kafka_config.replace(orders={"topic": kafka_config.kafka.upload_topic + "-orders",
                                       "status_topic": kafka_config.kafka.upload_topic + "-order-status"})
    ensure_topics(cfg.kafka, extra_topics=(cfg.orders.topic, cfg.orders.status_topic))
    received = datetime.now(timezone.utc)
    order = order_event("HC-2026-17", [
        {"target_id": "ordered", "video_id": "ordered", "video_uri": source.as_uri()},
        {"target_id": "gone", "video_id": "gone", "video_uri": (tmp_path / "gone.mp4").as_uri()},
        {"target_id": "list", "fingerprint_vpdq": f"0,100,{HASH},0.000\n"}], received,
        authority=("government", "MeitY"), legal_reference="IT Act s. 69A")
    registry = CollectorRegistry()
    with running_worker(cfg, pipeline_without_model, registry=registry):
        send(cfg, cfg.orders.topic, [(b"HC-2026-17", order), (b"bad", b'{"not": "an order"}')])
        [(key, status)] = committed(cfg, cfg.orders.status_topic, expected=1)
        wait_for_bank_entries(registry, 2)  # the video's and the list's, through the bank topic
        publish(cfg, [_event("reupload", reencode), _event("unrelated", sample_video("bikes.mp4"))])
        outputs = read_outputs(cfg, expected=4)

    validator("order-status").validate(status)
    data = status["data"]
    assert key == b"HC-2026-17" and data["status"] == "partial"
    assert [(t["target_id"], t["status"], t.get("reason")) for t in data["targets"]] == [
        ("ordered", "done", None), ("gone", "failed", "video_not_found"), ("list", "done", None)]
    assert data["within_deadline"] is True and 0 <= data["elapsed_seconds"] < 120
    assert data["deadline_seconds"] == 3 * 3600.0
    by_id = {(topic, record["data"].get("video_id")): record for topic, _, record in outputs}
    takedown = by_id[(cfg.kafka.verdict_topic, "ordered")]
    assert (takedown["data"]["decision"], takedown["data"]["reasons"]) == ("takedown", ["legal_order"])
    assert takedown["data"]["legal_order"]["order_id"] == "HC-2026-17"
    assert takedown["id"] == data["targets"][0]["verdict_id"]
    assert (cfg.kafka.verdict_topic, "gone") not in by_id  # not executed: no takedown
    caught = by_id[(cfg.kafka.verdict_topic, "reupload")]["data"]
    assert (caught["decision"], caught["reasons"]) == ("takedown", ["known_content_match"])
    assert caught["known_content"]["entry_id"] == "order:HC-2026-17:ordered"  # the order is its basis
    assert by_id[(cfg.kafka.verdict_topic, "unrelated")]["data"]["reasons"] != ["known_content_match"]
    [letter] = [r["data"] for topic, _, r in outputs if topic == cfg.kafka.dead_letter_topic]
    assert (letter["reason"], letter["source_topic"]) == ("schema_violation", cfg.orders.topic)
    assert len(outputs) == 4  # one takedown, two upload verdicts, one dead letter: nothing twice


def test_sigkill_mid_order_then_restart_gives_one_status_and_one_verdict_per_target(kafka_config, tmp_path):
    """The worker is killed while it fetches the order's second target (an HTTP server that
    holds the first request); the restarted worker executes the whole order again, and the
    killed transaction never shows: one status record, one takedown per video target."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from .test_faults import WorkerProcess

    body = sample_video("carphone_pristine.mp4").read_bytes()
    asked, release = threading.Event(), threading.Event()

    class Held(BaseHTTPRequestHandler):
        def do_GET(self):
            if not asked.is_set():
                asked.set()
                release.wait(60)  # the worker is killed meanwhile
            try:
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the killed worker's connection

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Held)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cfg = kafka_config.replace(orders={"topic": kafka_config.kafka.upload_topic + "-orders",
                                       "status_topic": kafka_config.kafka.upload_topic + "-order-status"})
    ensure_topics(cfg.kafka, bank_topic=cfg.bank.topic, extra_topics=(cfg.orders.topic, cfg.orders.status_topic))
    targets = [{"target_id": "first", "video_id": "first", "video_uri": sample_video("bikes.mp4").as_uri()},
               {"target_id": "held", "video_id": "held",
                "video_uri": f"http://127.0.0.1:{server.server_port}/held.mp4"},
               {"target_id": "last", "video_id": "last",
                "video_uri": sample_video("carphone_pristine.mp4").as_uri()}]
    env = {"MODERATION_ORDERS_TOPIC": cfg.orders.topic, "MODERATION_ORDERS_STATUS_TOPIC": cfg.orders.status_topic,
           "MODERATION_MEDIA_ALLOWED_NETWORKS": "127.0.0.1/32"}
    worker = WorkerProcess(cfg, "order-worker", tmp_path, static=True, **env).start()
    try:
        send(cfg, cfg.orders.topic, [(b"HC-KILL", order_event("HC-KILL", targets, datetime.now(timezone.utc)))])
        assert asked.wait(180), worker.log.read_text()[-3000:]
        worker.kill()  # mid-order: the first target is done, its records not yet committed
        assert committed(cfg, cfg.orders.status_topic, expected=0, timeout_s=3, settle_s=1) == []
        assert read_outputs(cfg, expected=0, timeout_s=3, settle_s=1) == []
        release.set()
        worker.start()
        statuses = committed(cfg, cfg.orders.status_topic, expected=1, timeout_s=240, settle_s=4)
        outputs = read_outputs(cfg, expected=3, timeout_s=120, settle_s=4)
        assert worker.terminate() == 0
    finally:
        release.set()
        if worker.alive():
            worker.kill()
        server.shutdown()
    [(key, status)] = statuses
    assert key == b"HC-KILL" and status["data"]["status"] == "done", status
    verdicts = [record for topic, _, record in outputs if topic == cfg.kafka.verdict_topic]
    assert sorted(r["data"]["video_id"] for r in verdicts) == ["first", "held", "last"]
    assert {r["id"] for r in verdicts} == {t["verdict_id"] for t in status["data"]["targets"]}
    assert len(outputs) == 3  # nothing twice, no dead letter
