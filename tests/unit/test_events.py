"""Upload events in, verdicts and dead letters out: parsing, bad input, serialising."""
from __future__ import annotations

import base64
import json
import sys
from datetime import datetime, timedelta, timezone

import pytest

from worker.core.aggregation import Aggregation
from worker.core.calibration import Calibration
from worker.core.credentials import Credentials, Signer
from worker.core.dead_letters import DeadLetter
from worker.core.events import (MAX_ORIGINAL_BYTES, ModelInfo, SourcePosition, Verdict,
                           dead_letter_record, format_time, parse_upload_event,
                           validator, verdict_record)
from worker.core.policy import Declaration, Label, Policy, policy_version
from worker.core.tracks import Detection, FaceTrack

from .conftest import UPLOADED_AT

MAX_BYTES = 256 * 1024
SHA = "sha256:" + "ab" * 32


def reason_of(value, max_bytes: int = MAX_BYTES) -> str:
    with pytest.raises(DeadLetter) as info:
        parse_upload_event(value, max_bytes)
    return info.value.reason


def changed(event: bytes, change) -> bytes:
    document = json.loads(event)
    change(document)
    return json.dumps(document).encode()


# --- parsing -----------------------------------------------------------------------------

def test_a_good_event_round_trips(make_event):
    raw = make_event("vid-7", "https://media.example.com/v/7.mp4", content_hash=SHA,
                     metadata={"title": "t", "duration_s": 4.5, "live": False, "region": None})
    event = parse_upload_event(raw, MAX_BYTES)
    assert (event.event_id, event.video_id, event.uploader, event.video_uri) == (
        "evt-vid-7", "vid-7", "user-1", "https://media.example.com/v/7.mp4")
    assert event.source == "urn:moderation:uploader"
    assert event.uploaded_at == UPLOADED_AT and event.uploaded_at.tzinfo is not None
    assert event.content_hash == SHA
    assert event.metadata == {"title": "t", "duration_s": 4.5, "live": False, "region": None}


def test_optional_fields_default_when_absent(make_event):
    event = parse_upload_event(make_event(), MAX_BYTES)
    assert event.content_hash is None and event.metadata == {}


def test_a_timestamp_with_another_offset_is_read_as_utc(make_event):
    raw = changed(make_event(), lambda d: d["data"].update(uploaded_at="2025-03-14T11:26:53+02:00"))
    assert parse_upload_event(raw, MAX_BYTES).uploaded_at == UPLOADED_AT


def test_the_size_limit_is_inclusive(make_event):
    raw = make_event()
    assert parse_upload_event(raw, len(raw)).video_id == "vid-a"
    assert reason_of(raw, len(raw) - 1) == "event_too_large"


def test_oversize_is_checked_before_anything_else():
    assert reason_of(b"x" * (MAX_BYTES + 1)) == "event_too_large"


@pytest.mark.parametrize("value", [
    b"not json", b"", b"{", b'{"specversion": "1.0",}', b"\x00\x01\x02",
], ids=["text", "empty", "unclosed", "trailing-comma", "binary"])
def test_bytes_that_are_not_json(value):
    assert reason_of(value) == "invalid_json"


def test_invalid_utf8_is_invalid_json(make_event):
    raw = make_event("vid-a").replace(b"vid-a", b"vid-\xc3\x28")
    assert reason_of(raw) == "invalid_json"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-8-sig"])
def test_an_event_in_another_encoding_than_utf8_is_invalid_json(make_event, encoding):
    """CloudEvents' JSON format is UTF-8: ``json.loads`` on bytes would guess the encoding and
    accept these (utf-16 and utf-8-sig carry a byte-order mark, utf-16-le none)."""
    raw = make_event("vid-a").decode().encode(encoding)
    with pytest.raises(DeadLetter) as info:
        parse_upload_event(raw, MAX_BYTES)
    assert info.value.reason == "invalid_json"
    assert "UTF-8" in info.value.message


def test_a_tombstone_is_invalid_json():
    assert reason_of(None) == "invalid_json"


def test_very_deep_nesting_is_invalid_json():
    assert reason_of(b"[" * 100_000) == "invalid_json"
    assert reason_of(b'{"a":' * 100_000, max_bytes=1 << 20) == "invalid_json"


@pytest.mark.parametrize("where", ["root", "metadata"])
def test_nesting_near_the_recursion_limit_is_a_dead_letter_never_a_crash(make_event, where):
    # Whether json.loads or the validator gives up first depends on the stack depth at the
    # call, so sweep the depths around the interpreter's limit: every one must dead-letter.
    template = changed(make_event(), lambda d: d["data"].update(metadata={"k": "@@"}))
    limit = sys.getrecursionlimit()
    crashes = []
    for depth in range(limit - 250, limit + 10):
        nested = b"[" * depth + b"]" * depth
        raw = nested if where == "root" else template.replace(b'"@@"', nested)
        try:
            parse_upload_event(raw, 10 * MAX_BYTES)
        except DeadLetter as exc:
            assert exc.reason in ("invalid_json", "schema_violation"), (depth, exc.reason)
        except RecursionError:
            crashes.append(depth)
    assert crashes == [], f"RecursionError escaped parse_upload_event at depths {crashes}"


@pytest.mark.parametrize("value", [b"[]", b'"an event"', b"42", b"null", b"true"])
def test_json_that_is_not_an_object_violates_the_schema(value):
    assert reason_of(value) == "schema_violation"


@pytest.mark.parametrize("change", [
    lambda d: d["data"].update(video_id=123),
    lambda d: d["data"].update(uploader=["user-1"]),
    lambda d: d.update(specversion=1.0),
    lambda d: d["data"].update(video_id=""),
    lambda d: d["data"].pop("video_uri"),
    lambda d: d["data"].pop("uploaded_at"),
    lambda d: d.pop("id"),
    lambda d: d.pop("data"),
    lambda d: d["data"].update(priority="high"),
    lambda d: d.update(traceparent="00-abc"),
    lambda d: d["data"].update(content_hash="sha1:" + "ab" * 20),
    lambda d: d["data"].update(metadata={"tags": ["a", "b"]}),
    lambda d: d["data"].update(metadata={f"k{i}": i for i in range(65)}),
    lambda d: d.update(type="dev.moderation.verdict.v1"),
], ids=["video_id-int", "uploader-list", "specversion-number", "video_id-empty",
        "missing-video_uri", "missing-uploaded_at", "missing-id", "missing-data",
        "extra-data-field", "extra-attribute", "sha1-hash", "nested-metadata",
        "too-much-metadata", "verdict-type"])
def test_schema_violations(make_event, change):
    assert reason_of(changed(make_event(), change)) == "schema_violation"


def test_a_newer_upload_version_is_unsupported_not_a_violation(make_event):
    assert reason_of(changed(make_event(), lambda d: d.update(type="dev.moderation.upload.v2"))) \
        == "unsupported_schema_version"
    # even when its data no longer fits v1: the version is the first thing to tell the sender
    v2 = changed(make_event(), lambda d: (d.update(type="dev.moderation.upload.v2"),
                                          d["data"].update(video="renamed")))
    assert reason_of(v2) == "unsupported_schema_version"


@pytest.mark.parametrize("field,value", [
    ("uploaded_at", "2025-03-14T09:26:53"),
    ("time", "2025-03-14T09:26:53.000001"),
    ("uploaded_at", "yesterday"),
    ("uploaded_at", "2025-02-30T00:00:00Z"),
])
def test_timestamps_need_a_date_time_with_an_offset(make_event, field, value):
    def change(d):
        (d["data"] if field == "uploaded_at" else d)[field] = value
    assert reason_of(changed(make_event(), change)) == "schema_violation"


@pytest.mark.parametrize("uri", ["ftp://files.example.com/v.mp4", "s3://bucket/v.mp4",
                                 "/videos/a.mp4", "javascript:alert(1)"])
def test_only_file_and_http_uris(make_event, uri):
    assert reason_of(changed(make_event(), lambda d: d["data"].update(video_uri=uri))) \
        == "schema_violation"


def test_a_schema_violation_message_stays_short(make_event):
    huge = changed(make_event(), lambda d: d["data"].update(video_uri="ftp://" + "x" * 4000))
    with pytest.raises(DeadLetter) as info:
        parse_upload_event(huge, MAX_BYTES)
    assert "data/video_uri" in info.value.message and len(info.value.message) < 400


# --- verdicts ----------------------------------------------------------------------------

MODEL = ModelInfo("efficientnet_b0", "1", "c" * 64)


def a_verdict(make_event, **changes) -> Verdict:
    event = parse_upload_event(make_event("vid-42"), MAX_BYTES)
    track = FaceTrack(0, (Detection(0, 0.0, (1.004, 2.0, 30.0, 40.0), 0.99, 0.93),
                          Detection(25, 1.0, (2.0, 3.0, 31.0, 41.0), 0.98, 0.97)))
    fields = dict(event=event, decision="takedown", reasons=("score_at_or_above_takedown_threshold",),
                  video_score=0.95, tracks=(track,), frames_sampled=8, model=MODEL,
                  policy_version="thresholds-v1:takedown=0.9,review=0.5",
                  stage_seconds={"fetch": 0.1, "decode": 0.2, "detect_faces": 0.3,
                                 "classify": 0.05, "processing": 0.7})
    fields.update(changes)
    return Verdict(**fields)


def test_verdict_record_is_valid_and_keyed_by_video_id(make_event):
    published = UPLOADED_AT + timedelta(seconds=12.345678)
    key, value = verdict_record(a_verdict(make_event), "worker-1", published)
    document = json.loads(value)
    assert key == b"vid-42"
    assert list(validator("verdict").iter_errors(document)) == []
    assert document["subject"] == "vid-42" and document["time"] == format_time(published)
    data = document["data"]
    assert (data["video_id"], data["source_event_id"], data["worker_id"]) == ("vid-42", "evt-vid-42", "worker-1")
    assert (data["decision"], data["face_count"], data["frames_sampled"]) == ("takedown", 2, 8)
    assert data["model"] == {"name": "efficientnet_b0", "version": "1", "checkpoint_sha256": "c" * 64,
                             "checkpoint_sha256s": ["c" * 64], "aggregation": "mean", "calibration": None}
    assert data["tracks"][0]["score"] == pytest.approx(0.95)
    assert [d["score"] for d in data["tracks"][0]["detections"]] == [0.93, 0.97]
    assert data["tracks"][0]["detections"][0]["box"] == [1.0, 2.0, 30.0, 40.0]


CREDENTIALS = Credentials("trusted", claim_generator="Gen 1.0", signer=Signer("Org", "Key"),
                          digital_source_types=("trainedAlgorithmicMedia",), manifest_bytes=4096)


def test_a_1_1_verdict_carries_the_credentials_and_names_its_schema(make_event):
    _, value = verdict_record(a_verdict(make_event, credentials=CREDENTIALS), "w", UPLOADED_AT, version="1.1")
    document = json.loads(value)
    assert document["dataschema"] == "https://schemas.deepfake-moderation.dev/v1.1/verdict.schema.json"
    assert Credentials.from_json(document["data"]["credentials"]) == CREDENTIALS
    assert list(validator("verdict", "1.1").iter_errors(document)) == []


def test_a_1_0_verdict_leaves_the_1_1_fields_out(make_event):
    _, value = verdict_record(a_verdict(make_event, credentials=CREDENTIALS), "w", UPLOADED_AT, version="1.0")
    document = json.loads(value)
    assert "dataschema" not in document and "credentials" not in document["data"]
    assert list(validator("verdict", "1.0").iter_errors(document)) == []


DECLARED = Declaration(synthetic=True, kind="ai_altered", tool="FaceFusion 3")


def test_an_upload_event_may_carry_the_uploaders_declaration(make_event):
    event = parse_upload_event(make_event("vid-42", declaration=DECLARED), MAX_BYTES)
    assert event.declaration == DECLARED
    assert parse_upload_event(make_event("vid-42"), MAX_BYTES).declaration is None  # optional
    plain = parse_upload_event(make_event("vid-42", declaration=Declaration(False)), MAX_BYTES)
    assert plain.declaration == Declaration(False)
    document = json.loads(make_event("vid-42", declaration=DECLARED))
    assert list(validator("upload-event", "1.0").iter_errors(document)), "1.0 has no declaration"
    assert list(validator("upload-event", "1.2").iter_errors(document)) == []


@pytest.mark.parametrize("declaration, where", [
    ({"synthetic": "yes"}, "data/declaration/synthetic"),
    ({"synthetic": False, "kind": "ai_generated"}, "data/declaration"),  # a kind only when synthetic
    ({"synthetic": True, "kind": "deepfake"}, "data/declaration/kind"),
    ({"kind": "ai_generated"}, "data/declaration"),
    ({"synthetic": True, "tool": "x" * 257}, "data/declaration/tool"),
    ({"synthetic": True, "model": "sd"}, "data/declaration"),
])
def test_a_malformed_declaration_is_a_schema_violation(make_event, declaration, where):
    document = json.loads(make_event("vid-42"))
    document["data"]["declaration"] = declaration
    with pytest.raises(DeadLetter) as caught:
        parse_upload_event(json.dumps(document).encode(), MAX_BYTES)
    assert caught.value.reason == "schema_violation" and caught.value.message.startswith(where)


def test_a_1_2_verdict_carries_the_label_and_the_declaration(make_event):
    event = parse_upload_event(make_event("vid-42", declaration=Declaration(False)), MAX_BYTES)
    needed = Label("pending_review", "ai_generated", ("content_credentials",),
                   "declaration_contradicted_by_credentials")
    _, value = verdict_record(a_verdict(make_event, event=event, credentials=CREDENTIALS, label=needed),
                              "w", UPLOADED_AT, version="1.2")
    document = json.loads(value)
    assert document["dataschema"] == "https://schemas.deepfake-moderation.dev/v1.2/verdict.schema.json"
    assert document["data"]["label"] == {"status": "pending_review", "kind": "ai_generated",
                                         "basis": ["content_credentials"],
                                         "rule": "declaration_contradicted_by_credentials"}
    assert document["data"]["declaration"] == {"synthetic": False}
    assert list(validator("verdict", "1.2").iter_errors(document)) == []
    _, older = verdict_record(a_verdict(make_event, event=event, credentials=CREDENTIALS, label=needed),
                              "w", UPLOADED_AT, version="1.1")
    older = json.loads(older)["data"]
    assert "label" not in older and "declaration" not in older and "credentials" in older


@pytest.mark.parametrize("seconds", [0.0, 12.345678, 3600.5])
def test_end_to_end_latency_runs_from_upload_to_publish(make_event, seconds):
    published = UPLOADED_AT + timedelta(seconds=seconds)
    _, value = verdict_record(a_verdict(make_event), "worker-1", published)
    latency = json.loads(value)["data"]["latency_seconds"]
    assert latency["end_to_end"] == pytest.approx((published - UPLOADED_AT).total_seconds(), abs=1e-6)
    assert latency["processing"] == pytest.approx(0.7)


def test_end_to_end_runs_from_the_record_clock_and_the_claim_is_kept(make_event):
    """The upload record's Kafka timestamp starts end_to_end; uploaded_at, the producer's
    claim (here two years off), is kept as since_uploaded_at."""
    received = UPLOADED_AT + timedelta(days=730)
    _, value = verdict_record(a_verdict(make_event), "worker-1", received + timedelta(seconds=4.25),
                              received_at=received)
    latency = json.loads(value)["data"]["latency_seconds"]
    assert latency["end_to_end"] == pytest.approx(4.25)
    assert latency["since_uploaded_at"] == pytest.approx(730 * 86_400 + 4.25)


def test_each_verdict_record_is_a_new_cloudevent(make_event):
    verdict = a_verdict(make_event)
    ids = {json.loads(verdict_record(verdict, "w", UPLOADED_AT)[1])["id"] for _ in range(3)}
    assert len(ids) == 3


def test_a_calibrated_ensemble_verdict_names_every_checkpoint_and_both_scores(make_event):
    calibration = Calibration("temperature", 0.97, 0.4, temperature=1.3, target_precision=0.99,
                              validation={"dataset": "platform-val", "videos": 412})
    model = ModelInfo("dfdc-winner-b7", "2020", "a" * 64, ("a" * 64, "b" * 64), "dfdc_winner",
                      Aggregation("confident_strategy", 0.8), calibration)
    verdict = a_verdict(make_event, model=model, video_score=0.98, raw_video_score=0.95,
                        decisive_track_id=0, policy_version=policy_version(Policy(), calibration))
    data = json.loads(verdict_record(verdict, "w", UPLOADED_AT)[1])["data"]
    assert data["model"]["checkpoint_sha256s"] == ["a" * 64, "b" * 64]
    assert (data["model"]["backend"], data["model"]["aggregation"]) == ("dfdc_winner", "confident_strategy(t=0.8)")
    assert data["model"]["calibration"] == {"method": "temperature", "temperature": 1.3, "takedown_threshold": 0.97,
                                            "review_threshold": 0.4, "target_precision": 0.99}
    assert (data["video_score"], data["raw_video_score"], data["decisive_track_id"]) == (0.98, 0.95, 0)
    assert data["policy_version"] == "calibrated-v1:" + calibration.version


def test_a_verdict_without_model_or_faces_serialises_nulls(make_event):
    verdict = a_verdict(make_event, decision="allow", reasons=("no_faces_detected",),
                        video_score=None, tracks=(), model=None)
    data = json.loads(verdict_record(verdict, "w", UPLOADED_AT)[1])["data"]
    assert (data["model"], data["video_score"], data["tracks"], data["face_count"]) == (None, None, [], 0)


def test_an_invalid_verdict_is_never_serialised(make_event):
    with pytest.raises(ValueError, match="refusing to publish"):
        verdict_record(a_verdict(make_event, video_score=1.5), "w", UPLOADED_AT)
    with pytest.raises(ValueError, match="refusing to publish"):
        verdict_record(a_verdict(make_event, decision="delete"), "w", UPLOADED_AT)


# --- dead letters ------------------------------------------------------------------------

POSITION = SourcePosition("uploads.v1", 2, 1041)


def dead_letter(value, key=b"k-1", event=None, reason="invalid_json"):
    key_out, raw = dead_letter_record(DeadLetter(reason, "why"), value, key, POSITION, "worker-1",
                                      UPLOADED_AT, event)
    document = json.loads(raw)
    assert list(validator("dead-letter").iter_errors(document)) == []
    return key_out, document


def test_dead_letter_keeps_the_original_bytes_exactly():
    original = b"\x00\xff{not json\n\xc3\x28" + bytes(range(256))
    key, document = dead_letter(original)
    data = document["data"]
    assert base64.b64decode(data["original_value_base64"], validate=True) == original
    assert data["original_value_truncated"] is False
    assert key == b"k-1" and base64.b64decode(data["original_key_base64"]) == b"k-1"
    assert (data["source_topic"], data["source_partition"], data["source_offset"]) == ("uploads.v1", 2, 1041)
    assert (data["reason"], data["message"], data["worker_id"]) == ("invalid_json", "why", "worker-1")
    assert data["source_event_id"] is None and data["video_id"] is None and "subject" not in document


def test_dead_letter_of_a_tombstone_without_key():
    key, document = dead_letter(None, key=None)
    assert key is None
    assert document["data"]["original_value_base64"] == ""
    assert document["data"]["original_key_base64"] is None


def test_dead_letter_names_the_event_when_it_was_parsed(make_event):
    raw = make_event("vid-9")
    _, document = dead_letter(raw, event=parse_upload_event(raw, MAX_BYTES), reason="video_not_found")
    assert document["subject"] == "vid-9"
    assert (document["data"]["video_id"], document["data"]["source_event_id"]) == ("vid-9", "evt-vid-9")


def test_dead_letter_truncates_an_original_over_the_limit():
    original = bytes(i % 251 for i in range(MAX_ORIGINAL_BYTES + 1000))
    _, document = dead_letter(original, reason="event_too_large")
    data = document["data"]
    assert data["original_value_truncated"] is True
    assert base64.b64decode(data["original_value_base64"]) == original[:MAX_ORIGINAL_BYTES]


def test_an_original_exactly_at_the_limit_is_kept_whole():
    original = b"z" * MAX_ORIGINAL_BYTES
    _, document = dead_letter(original, reason="event_too_large")
    assert document["data"]["original_value_truncated"] is False
    assert base64.b64decode(document["data"]["original_value_base64"]) == original


def test_dead_letter_reasons_are_a_closed_set():
    with pytest.raises(ValueError):
        DeadLetter("something_else", "not a reason")


def test_format_time_is_utc_with_z():
    assert format_time(datetime(2025, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))) \
        == "2025-01-02T03:04:05.000000Z"
