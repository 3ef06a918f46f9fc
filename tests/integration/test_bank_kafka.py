"""The hash bank through the real broker: a takedown on one worker, or a reviewer's
confirmation consumed by one worker, is matched by another worker within seconds, with no
restart and no model on the second worker."""
from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from worker.testing.samples import sample_video

from .conftest import publish, read_outputs, running_worker
from .test_bank_variants import build_variant, decode_all
from .test_kafka_roundtrip import _event

pytestmark = pytest.mark.kafka


def wait_for_bank_entries(registry: CollectorRegistry, count: int, timeout_s: float = 60.0) -> None:
    """Until the worker behind ``registry`` holds ``count`` positive bank entries."""
    deadline = time.monotonic() + timeout_s
    while (registry.get_sample_value("moderation_bank_entries", {"bank": "positive"}) or 0) < count:
        assert time.monotonic() < deadline, f"the worker's bank never reached {count} entries"
        time.sleep(0.05)


def second_worker(first, **bank):
    """Another worker on the same broker and bank topic, with its own group and topics."""
    return first.replace(kafka={"group_id": first.kafka.group_id + "-second",
                                "upload_topic": first.kafka.upload_topic + "-second",
                                "verdict_topic": first.kafka.verdict_topic + "-second",
                                "dead_letter_topic": first.kafka.dead_letter_topic + "-second"},
                         bank=bank, worker={"id": "second-worker"})


def test_a_takedown_on_one_worker_catches_a_re_upload_on_another(kafka_config, pipeline_with_model,
                                                               pipeline_without_model, tmp_path):
    source = sample_video("carphone_pristine.mp4")
    frames, rate = decode_all(source)
    reupload = build_variant(source, frames, rate, "half", tmp_path)  # scaled to half size
    # The first worker has a model and scores matches after their verdicts.
    first = kafka_config.replace(bank={"score_matches": True})
    second = second_worker(first)
    from worker.runtime.clients import ensure_topics
    ensure_topics(second.kafka, bank_topic=second.bank.topic)

    # The second worker has no model: only the bank can make it recommend a takedown.
    second_registry = CollectorRegistry()
    with (running_worker(second, pipeline_without_model, registry=second_registry),
          running_worker(first, pipeline_with_model)):
        publish(first, [_event("original", source)])
        [(_, _, original)] = read_outputs(first, expected=1, settle_s=0)
        assert original["data"]["reasons"] == ["score_at_or_above_takedown_threshold"]
        taken_down = time.monotonic()
        # The entry reaches the other worker through the bank topic, with no restart.
        wait_for_bank_entries(second_registry, 1)
        publish(second, [_event("reupload", reupload), _event("unrelated", sample_video("bikes.mp4"))])
        outputs = read_outputs(second, expected=2, settle_s=0)
        caught_after = time.monotonic() - taken_down
        publish(first, [_event("reupload-scored", reupload)])
        scored = read_outputs(first, expected=3, settle_s=1)

    verdicts = {r["data"]["video_id"]: r["data"] for _, _, r in outputs}
    caught = verdicts["reupload"]
    assert (caught["decision"], caught["reasons"]) == ("takedown", ["known_content_match"])
    assert caught["model"] is None and caught["tracks"] == []  # no model ran
    match = caught["known_content"]
    assert match["source_video_id"] == "original"
    assert match["entry_match_percent"] >= 80 and match["query_match_percent"] > 0
    assert 0 <= match["median_distance"] <= 31
    assert verdicts["unrelated"]["reasons"] != ["known_content_match"]
    assert caught["fingerprint_vpdq"].count("\n") >= 3  # about one hashed frame a second
    assert caught_after < 60

    # On the worker with a model and bank.score_matches, the verdict does not wait for the
    # models: it comes first, without a score, and the score follows as its own record.
    later = [r for _, _, r in scored if r["subject"] == "reupload-scored"]
    assert [r["type"] for r in later] == ["dev.moderation.verdict.v1", "dev.moderation.match-score.v1"]
    verdict, score = later
    assert verdict["data"]["reasons"] == ["known_content_match"] and verdict["data"]["tracks"] == []
    assert verdict["data"]["video_score"] is None and "classify" not in verdict["data"]["latency_seconds"]
    assert score["data"]["source_event_id"] == verdict["data"]["source_event_id"]
    assert score["data"]["video_score"] > 0.99 and score["data"]["model_decision"] == "takedown"
    assert score["data"]["model"] is not None and score["data"]["face_count"] > 0


def test_a_takedowns_dense_entry_catches_a_trimmed_re_upload_on_another_worker(
        kafka_config, pipeline_with_model, pipeline_without_model, tmp_path):
    """bikes.mp4 pans fast: the entry its takedown adds at once (its upload's one-a-second
    frames) misses the middle half re-encoded. The verdict also queues the upload on the
    densify topic; a worker of the group fingerprints it densely and writes the entry again;
    the second worker's bank swaps it in, and then catches the clip."""
    from worker.runtime.clients import ensure_topics

    source = sample_video("bikes.mp4")
    frames, rate = decode_all(source)
    clip = build_variant(source, frames, rate, "trim", tmp_path)
    first = kafka_config.replace(bank={"densify_topic": kafka_config.bank.topic + "-densify"})
    second = second_worker(first, densify_topic="")
    ensure_topics(first.kafka, extra_topics=(first.bank.densify_topic,))
    ensure_topics(second.kafka)

    second_registry = CollectorRegistry()

    def rows() -> float:
        return second_registry.get_sample_value("moderation_bank_index_rows") or 0

    with (running_worker(second, pipeline_without_model, registry=second_registry),
          running_worker(first, pipeline_with_model)):
        publish(first, [_event("bikes-original", source)])
        [(_, _, original)] = read_outputs(first, expected=1, settle_s=0)
        assert original["data"]["decision"] == "takedown"
        wait_for_bank_entries(second_registry, 1)
        one_a_second = rows()
        deadline = time.monotonic() + 120
        while rows() < 3 * one_a_second:  # the dense version replaces the entry
            assert time.monotonic() < deadline, f"no dense entry: {rows()} rows"
            time.sleep(0.1)
        publish(second, [_event("bikes-clip", clip)])
        [(_, _, caught)] = read_outputs(second, expected=1, settle_s=0)
        first_outputs = read_outputs(first, expected=1, settle_s=1)

    data = caught["data"]
    assert (data["decision"], data["reasons"]) == ("takedown", ["known_content_match"])
    assert data["known_content"]["source_video_id"] == "bikes-original"
    assert data["known_content"]["query_match_percent"] >= 70
    assert [r["type"] for _, _, r in first_outputs] == ["dev.moderation.verdict.v1"]  # no dead letter
    # one entry in the bank, written twice: the takedown's, then the dense one
    assert second_registry.get_sample_value("moderation_bank_entries", {"bank": "positive"}) == 1


def test_hash_lists_export_and_import_round_trip(kafka_config, tmp_path):
    """vPDQ files in, the bank topic, vPDQ files out, into a second bank and out again."""
    import json
    import os
    import subprocess
    import sys

    from worker.bank.fingerprint import fingerprint_frames
    from worker.runtime.clients import ensure_topics

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("carphone_pristine.mp4", "bikes.mp4"):
        frames, rate = decode_all(sample_video(name))
        times = [i / rate for i in range(len(frames))]
        (shared / f"{name.split('.')[0]}.txt").write_text(fingerprint_frames(frames, times).to_vpdq_text())

    def bank_cli(topic: str, *args: str) -> str:
        env = {**os.environ, "MODERATION_KAFKA_BOOTSTRAP_SERVERS": kafka_config.kafka.bootstrap_servers,
               "MODERATION_BANK_TOPIC": topic}
        result = subprocess.run([sys.executable, "-m", "worker", "bank", *args], cwd=repo, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout + result.stderr

    second_topic = kafka_config.bank.topic + "-second"
    ensure_topics(kafka_config.kafka, bank_topic=second_topic)
    assert "imported 2 entries" in bank_cli(kafka_config.bank.topic, "import", str(shared),
                                            "--bank", "negative", "--reason", "industry-list")
    first_out, second_out = tmp_path / "out1", tmp_path / "out2"
    log = bank_cli(kafka_config.bank.topic, "export", str(first_out))
    assert "exported 2 entries" in log and "reading the bank" in log  # the progress bar
    assert bank_cli(second_topic, "import", str(first_out)).count("imported 2 entries") == 1
    bank_cli(second_topic, "export", str(second_out))

    for name in ("carphone_pristine.txt", "bikes.txt"):
        assert (first_out / name).read_text() == (shared / name).read_text()
        assert (second_out / name).read_text() == (shared / name).read_text()
    manifest = [json.loads(line) for line in (second_out / "entries.jsonl").read_text().splitlines()]
    assert {(m["entry_id"], m["bank"], m["reason"]) for m in manifest} == {
        ("carphone_pristine", "negative", "industry-list"), ("bikes", "negative", "industry-list")}


def _bank_records(cfg, wanted: str, timeout_s: float = 60.0) -> dict:
    """The bank topic's committed records by key, once one keyed ``wanted`` has arrived."""
    from kafka.structs import TopicPartition

    from worker.runtime.clients import build_bank_consumer

    consumer = build_bank_consumer(cfg.kafka)
    seen: dict = {}
    try:
        tp = TopicPartition(cfg.bank.topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + timeout_s
        while wanted not in seen and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                seen.update((r.key.decode(), r.value) for r in records)
    finally:
        consumer.close()
    return seen


def test_a_reviewers_confirmation_makes_another_worker_take_down_a_re_upload(
        kafka_config, pipeline_without_model, tmp_path):
    """No model anywhere: the original goes to review; a reviewer confirms it on the
    confirmation topic; the first worker turns that into a bank entry (re-fingerprinting the
    video from its URI), and the second worker takes down a cropped re-upload."""
    import json

    from kafka import KafkaProducer

    from worker.bank.confirmations import CONFIRMATION_TYPE, reviewed_entry_id
    from worker.bank.entries import parse_entry_record
    from worker.runtime.clients import ensure_topics

    source = sample_video("carphone_pristine.mp4")
    frames, rate = decode_all(source)
    reupload = build_variant(source, frames, rate, "left", tmp_path)  # 5% off the left
    # The first worker's group consumes reviewers' confirmations with its uploads.
    first = kafka_config.replace(bank={"confirmation_topic": kafka_config.bank.topic + "-confirmations"})
    second = second_worker(first, confirmation_topic="")
    ensure_topics(first.kafka, extra_topics=(first.bank.confirmation_topic,))
    ensure_topics(second.kafka)

    def confirm(data: dict) -> bytes:
        return json.dumps({"specversion": "1.0", "id": f"review-{time.monotonic_ns()}",
                           "source": "urn:review-tool", "type": CONFIRMATION_TYPE,
                           "time": "2026-11-28T12:00:00Z", "subject": data["video_id"],
                           "datacontenttype": "application/json",
                           "data": {"reviewer": "reviewer:ana", "decided_at": "2026-11-28T12:00:00Z",
                                    "reason": "face swap, checked", **data}}).encode()

    second_registry = CollectorRegistry()
    with (running_worker(second, pipeline_without_model, registry=second_registry),
          running_worker(first, pipeline_without_model)):
        publish(first, [_event("original", source)])
        [(_, _, original)] = read_outputs(first, expected=1, settle_s=0)
        assert original["data"]["decision"] == "review" and "known_content" not in original["data"]
        producer = KafkaProducer(bootstrap_servers=first.kafka.bootstrap_servers, acks="all")
        try:
            for value in (confirm({"video_id": "original", "decision": "confirmed_takedown",
                                   "verdict_id": original["id"], "video_uri": source.as_uri()}),
                          confirm({"video_id": "other", "decision": "confirmed_takedown"})):
                producer.send(first.bank.confirmation_topic, key=b"original", value=value).get(timeout=30)
        finally:
            producer.close()
        entry_id = reviewed_entry_id("original", "positive")
        bank = _bank_records(first, entry_id)
        assert entry_id in bank and bank[entry_id] is not None
        wait_for_bank_entries(second_registry, 1)  # the second worker's follower has it
        publish(second, [_event("reupload", reupload), _event("unrelated", sample_video("bikes.mp4"))])
        outputs = read_outputs(second, expected=2, settle_s=0)
        dead = read_outputs(first, expected=2, settle_s=1)

    verdicts = {r["data"]["video_id"]: r["data"] for _, _, r in outputs}
    caught = verdicts["reupload"]
    assert (caught["decision"], caught["reasons"]) == ("takedown", ["known_content_match"])
    assert caught["known_content"]["entry_id"] == entry_id
    assert caught["known_content"]["source_video_id"] == "original"
    assert verdicts["unrelated"]["reasons"] != ["known_content_match"]
    # the confirmation without a fingerprint is dead-lettered, with the reason and where it was
    [letter] = [r["data"] for topic, _, r in dead if topic == first.kafka.dead_letter_topic]
    assert (letter["reason"], letter["source_topic"]) == ("schema_violation", first.bank.confirmation_topic)
    entry = parse_entry_record(entry_id.encode(), bank[entry_id])
    assert (entry.bank, entry.added_by, entry.source_video_id) == ("positive", "reviewer:ana", "original")
    assert entry.fingerprint is not None  # re-fingerprinted from the URI, robustness hashes too
