"""Fuzzing the event parser: whatever the bytes, the answer is an upload event or a dead
letter with a known reason, never another exception. Budget bounded for CI."""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.core.dead_letters import REASONS, DeadLetter
from worker.core.events import UploadEvent, parse_upload_event, upload_event

BUDGET = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = json.loads(upload_event("vid-1", "https://cdn.example.com/v.mp4", "user-1", event_id="e-1"))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30)


def parses_or_dead_letters(value: bytes | None) -> None:
    try:
        assert isinstance(parse_upload_event(value, max_bytes=64 * 1024), UploadEvent)
    except DeadLetter as failure:
        assert failure.reason in REASONS


@BUDGET
@given(st.binary(max_size=2048))
def test_any_bytes(value):
    parses_or_dead_letters(value)


@BUDGET
@given(json_values)
def test_any_json(document):
    parses_or_dead_letters(json.dumps(document).encode())


@BUDGET
@given(st.sampled_from(["specversion", "id", "source", "type", "time", "data"]) | st.text(max_size=8),
       json_values)
def test_a_valid_event_with_one_attribute_replaced(key, value):
    document = json.loads(json.dumps(VALID))
    document[key] = value
    parses_or_dead_letters(json.dumps(document).encode())


@BUDGET
@given(st.sampled_from(["video_id", "uploader", "video_uri", "uploaded_at", "content_hash", "metadata"])
       | st.text(max_size=8), json_values)
def test_a_valid_event_with_one_data_field_replaced(key, value):
    document = json.loads(json.dumps(VALID))
    document["data"][key] = value
    parses_or_dead_letters(json.dumps(document).encode())


@BUDGET
@given(st.integers(min_value=0, max_value=len(json.dumps(VALID)) - 1), st.binary(min_size=1, max_size=8))
def test_a_valid_event_with_bytes_overwritten(at, junk):
    raw = bytearray(json.dumps(VALID).encode())
    raw[at:at + len(junk)] = junk
    parses_or_dead_letters(bytes(raw))
