"""Upload events in, verdicts and dead letters out, through the real Apache Kafka broker,
with real video files decoded by decord and real MTCNN weights."""
from __future__ import annotations

import base64
import json
import urllib.request
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from worker.core.events import upload_event, validator
from worker.testing.samples import sample_video

from .conftest import publish, read_outputs, running_worker

pytestmark = pytest.mark.kafka


def _event(video_id: str, path: Path | str, event_id: str | None = None) -> tuple[bytes, bytes]:
    uri = path if isinstance(path, str) else path.as_uri()
    return video_id.encode(), upload_event(video_id, uri, "tester", event_id=event_id or f"evt-{video_id}")


def _by_video(outputs):
    return {record["data"]["video_id"]: (topic, key, record) for topic, key, record in outputs}


def test_sample_videos_get_verdicts_with_face_evidence(kafka_config, pipeline_with_model,
                                                       fake_face_checkpoint):
    cfg = kafka_config
    publish(cfg, [_event("carphone", sample_video("carphone_pristine.mp4")),
                  _event("bunny", sample_video("bigbuckbunny.mp4"))])
    with running_worker(cfg, pipeline_with_model):
        outputs = read_outputs(cfg, expected=2)

    assert [t for t, _, _ in outputs] == [cfg.kafka.verdict_topic] * 2
    verdicts = _by_video(outputs)
    for _, key, record in verdicts.values():
        validator("verdict").validate(record)
        assert key == record["data"]["video_id"].encode()  # verdicts are keyed by video id

    carphone = verdicts["carphone"][2]["data"]
    assert carphone["source_event_id"] == "evt-carphone"
    assert carphone["frames_sampled"] == 32
    # A real face in every frame: MTCNN finds it, and the tracker follows it as one identity.
    assert carphone["face_count"] >= 30
    main_track = max(carphone["tracks"], key=lambda t: len(t["detections"]))
    assert len(main_track["detections"]) >= 30
    first = main_track["detections"][0]
    x1, y1, x2, y2 = first["box"]
    assert 0 <= x1 < x2 <= 176 and 0 <= y1 < y2 <= 144
    assert first["detection_confidence"] > 0.9
    frames = [d["frame_index"] for d in main_track["detections"]]
    assert frames == sorted(frames) and frames[-1] > 100  # spread over the 120-frame clip
    # The test checkpoint's head outputs logit +10 for any face: sigmoid(10) = 0.99995.
    assert carphone["video_score"] == pytest.approx(0.99995, abs=1e-4)
    assert carphone["decision"] == "takedown"
    assert carphone["reasons"] == ["score_at_or_above_takedown_threshold"]
    assert carphone["model"]["checkpoint_sha256"] == fake_face_checkpoint[1]
    assert carphone["model"]["name"] == "efficientnet_b0"
    # The model file's calibration (T = 1) is what allows the takedown; both scores are kept.
    assert carphone["model"]["calibration"]["method"] == "temperature"
    assert carphone["model"]["checkpoint_sha256s"] == [fake_face_checkpoint[1]]
    assert carphone["raw_video_score"] == pytest.approx(0.99995, abs=1e-4)
    assert carphone["decisive_track_id"] in [t["track_id"] for t in carphone["tracks"]]
    for stage in ("fetch", "decode", "detect_faces", "classify", "processing", "end_to_end"):
        assert carphone["latency_seconds"][stage] >= 0
    assert carphone["latency_seconds"]["end_to_end"] >= carphone["latency_seconds"]["processing"]
    assert carphone["worker_id"] == "test-worker"

    bunny = verdicts["bunny"][2]["data"]
    assert bunny["decision"] in ("takedown", "review", "allow")
    assert bunny["frames_sampled"] == 32


def test_without_a_checkpoint_faces_go_to_review_never_takedown(kafka_config, pipeline_without_model):
    cfg = kafka_config
    publish(cfg, [_event("carphone", sample_video("carphone_pristine.mp4"))])
    with running_worker(cfg, pipeline_without_model):
        (_, _, record), = read_outputs(cfg, expected=1)
    data = record["data"]
    assert data["decision"] == "review"
    assert data["reasons"] == ["no_model_checkpoint"]
    assert data["model"] is None and data["video_score"] is None
    assert data["face_count"] >= 30


def test_bad_inputs_become_dead_letters_and_the_worker_goes_on(kafka_config, pipeline_without_model,
                                                               tmp_path):
    cfg = kafka_config
    carphone = sample_video("carphone_pristine.mp4").read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(carphone[: len(carphone) // 2])
    text = tmp_path / "not-a-video.mp4"
    text.write_text("this is a text file, not a video\n" * 200)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    schema_violation = json.loads(upload_event("x", "file:///x.mp4", "tester", event_id="evt-schema"))
    del schema_violation["data"]["video_id"]

    inputs = [
        (b"raw", b"\x00\x01 definitely not json"),
        (b"schema", json.dumps(schema_violation).encode()),
        _event("missing", tmp_path / "no-such-file.mp4"),
        _event("text", text),
        _event("truncated", truncated),
        _event("empty", empty),
        _event("good", sample_video("carphone_pristine.mp4")),
    ]
    publish(cfg, inputs)
    with running_worker(cfg, pipeline_without_model):
        outputs = read_outputs(cfg, expected=len(inputs))

    assert len(outputs) == len(inputs)  # exactly one result per input event
    dead = [(key, record["data"]) for topic, key, record in outputs if topic == cfg.kafka.dead_letter_topic]
    for _, data in dead:
        assert data["source_topic"] == cfg.kafka.upload_topic
    reasons = {base64.b64decode(d["original_value_base64"]): d["reason"] for _, d in dead}
    by_key = {key: d["reason"] for key, d in dead}
    assert by_key == {
        b"raw": "invalid_json",
        b"schema": "schema_violation",
        b"missing": "video_not_found",
        b"text": "not_a_video",
        b"truncated": "video_truncated",
        b"empty": "empty_file",
    }
    # The dead letter keeps the original bytes, so the event can be replayed.
    assert b"\x00\x01 definitely not json" in reasons
    offsets = sorted(d["source_offset"] for _, d in dead)
    assert offsets == [0, 1, 2, 3, 4, 5]
    verdicts = [r for t, _, r in outputs if t == cfg.kafka.verdict_topic]
    assert [v["data"]["video_id"] for v in verdicts] == ["good"]


def test_restarted_worker_does_not_reprocess_committed_events(kafka_config, pipeline_without_model):
    cfg = kafka_config
    clip = sample_video("carphone_pristine.mp4")
    publish(cfg, [_event("first", clip), _event("second", clip)])
    with running_worker(cfg, pipeline_without_model):
        assert len(read_outputs(cfg, expected=2)) == 2

    publish(cfg, [_event("third", clip)])
    registry = CollectorRegistry()
    with running_worker(cfg, pipeline_without_model, registry=registry):
        outputs = read_outputs(cfg, expected=3, settle_s=4.0)

    ids = Counter(record["data"]["source_event_id"] for _, _, record in outputs)
    assert ids == {"evt-first": 1, "evt-second": 1, "evt-third": 1}
    assert registry.get_sample_value("moderation_events_consumed_total") == 1.0


def test_metrics_and_health_endpoints(kafka_config, pipeline_without_model):
    cfg = kafka_config
    clip = sample_video("carphone_pristine.mp4")
    # the repository's example date: a producer clock (or a replay) 20 months off
    stale = upload_event("stale", clip.as_uri(), "tester", event_id="evt-stale",
                         uploaded_at=datetime(2025, 3, 14, 9, 26, 53, tzinfo=timezone.utc))
    publish(cfg, [_event("carphone", clip), (b"bad", b"{not json"), (b"stale", stale)])
    with running_worker(cfg, pipeline_without_model) as port:
        outputs = read_outputs(cfg, expected=3)
        base = f"http://127.0.0.1:{port}"
        assert urllib.request.urlopen(f"{base}/livez").status == 200
        ready = json.loads(urllib.request.urlopen(f"{base}/readyz").read())
        assert ready == {"model_loaded": True, "kafka_reachable": True, "partitions_assigned": True,
                         "bank_loaded": True}
        text = urllib.request.urlopen(f"{base}/metrics").read().decode()

    def sample(name: str) -> float:
        line = next(l for l in text.splitlines() if l.startswith(name + " ") or l.startswith(name + "{"))
        return float(line.rsplit(" ", 1)[1])

    assert sample('moderation_decisions_total{decision="review"}') == 2.0
    assert sample('moderation_dead_letters_total{reason="invalid_json"}') == 1.0
    assert sample("moderation_events_consumed_total") == 3.0
    # Both verdicts' latencies run on the records' Kafka timestamps; the stale uploaded_at is
    # counted, never observed, and the verdict keeps it as the producer's claim.
    assert sample("moderation_end_to_end_latency_seconds_count") == 2.0
    assert sample("moderation_end_to_end_latency_seconds_sum") < 600
    assert sample("moderation_claimed_end_to_end_latency_seconds_count") == 1.0
    assert sample('moderation_latency_out_of_window_total{clock="uploaded_at"}') == 1.0
    assert sample('moderation_latency_out_of_window_total{clock="kafka_record"}') == 0.0
    latency = _by_video(outputs)["stale"][2]["data"]["latency_seconds"]
    assert 0 <= latency["end_to_end"] < 600 and latency["since_uploaded_at"] > 5e7
    assert sample('moderation_stage_duration_seconds_count{stage="detect_faces"}') == 2.0
    assert sample('moderation_stage_duration_seconds_count{stage="publish"}') == 3.0


def test_hostile_inputs_each_end_as_one_dead_letter(kafka_config, pipeline_without_model, tmp_path):
    """Through the real worker and broker: each hostile event gives exactly one dead letter
    with its specific reason, and the worker goes on to a good event after them."""
    from ..media_factory import write_audio_only

    cfg = kafka_config
    clip = sample_video("carphone_pristine.mp4")
    escape = tmp_path / "escape.mp4"
    escape.symlink_to("/etc/passwd")
    audio = write_audio_only(tmp_path / "audio-only.mp4")
    wrong_type = json.loads(upload_event("typed", clip.as_uri(), "tester", event_id="evt-typed"))
    wrong_type["data"]["video_id"] = 123
    future = json.loads(upload_event("future", clip.as_uri(), "tester", event_id="evt-future"))
    future["type"] = "dev.moderation.upload.v2"
    huge = json.loads(upload_event("huge", clip.as_uri(), "tester", event_id="evt-huge"))
    huge["data"]["metadata"] = {"padding": "x" * 300_000}

    cases = [
        (b"huge", json.dumps(huge).encode(), "event_too_large"),
        (b"deep", b"[" * 100_000, "invalid_json"),
        (b"typed", json.dumps(wrong_type).encode(), "schema_violation"),
        (b"future", json.dumps(future).encode(), "unsupported_schema_version"),
        _event("metadata-ip", "http://169.254.169.254/latest/meta-data/") + ("uri_not_allowed",),
        _event("outside-roots", "file:///etc/passwd") + ("uri_not_allowed",),
        _event("symlink", escape) + ("uri_not_allowed",),
        _event("audio", audio) + ("not_a_video",),
        _event("first", clip, event_id="evt-twice") + (None,),
        _event("again", clip, event_id="evt-twice") + ("duplicate_event",),
        _event("good", clip) + (None,),
    ]
    publish(cfg, [(key, value) for key, value, _ in cases])
    with running_worker(cfg, pipeline_without_model):
        outputs = read_outputs(cfg, expected=len(cases))

    assert len(outputs) == len(cases)
    reasons = {key: record["data"].get("reason") for topic, key, record in outputs}
    assert reasons == {key: reason for key, _, reason in cases}
    verdicts = [r["data"]["video_id"] for t, _, r in outputs if t == cfg.kafka.verdict_topic]
    assert verdicts == ["first", "good"]
