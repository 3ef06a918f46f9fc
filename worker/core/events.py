"""Upload events in, verdicts and dead-letter records out: the v1 contracts in ``schemas/``.

All three are CloudEvents 1.0 in structured mode: the whole event, attributes and data, is
the JSON value of the Kafka record. Structured mode keeps an event self-describing when it
is copied, replayed from a dead-letter topic or archived, and needs no header handling in
clients. Parsing validates against the schema files; so does serialising, so the worker
never publishes a record its consumers would reject.
"""
from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema

from worker.core import dead_letters
from worker.core.aggregation import Aggregation
from worker.core.calibration import Calibration
from worker.core.credentials import Credentials
from worker.core.dead_letters import DeadLetter
from worker.core.policy import Declaration, KnownContentMatch, Label
from worker.core.tracks import FaceTrack

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
# Output ids derive from the input record, so a redelivered result keeps its id.
_OUTPUT_ID_NAMESPACE = uuid.UUID("6f1c0f53-3c2e-4b8e-9a43-2f0e1d6c7b21")
UPLOAD_TYPE = "dev.moderation.upload.v1"
VERDICT_TYPE = "dev.moderation.verdict.v1"
DEAD_LETTER_TYPE = "dev.moderation.deadletter.v1"
_UPLOAD_TYPE_PREFIX = "dev.moderation.upload."


# The minor versions of v1, oldest first (docs/events.md, "Evolving the contracts"): each
# adds optional fields in ``schemas/v1.N/``, a folder holding the schemas that changed.
VERSIONS = ("1.0", "1.1", "1.2", "1.3")
LATEST = VERSIONS[-1]


def schema_path(name: str, version: str = LATEST) -> Path:
    """The file of ``name`` at ``version``: the newest at or below it."""
    if version not in VERSIONS:
        raise ValueError(f"unknown contract version {version!r}; known: {', '.join(VERSIONS)}")
    for known in reversed(VERSIONS[:VERSIONS.index(version) + 1]):
        path = SCHEMA_DIR / ("v1" if known == "1.0" else f"v{known}") / f"{name}.schema.json"
        if path.is_file():
            return path
    raise FileNotFoundError(f"no schema {name!r}")


@lru_cache(maxsize=None)
def validator(name: str, version: str = LATEST) -> jsonschema.protocols.Validator:
    """The draft 2020-12 validator of ``name`` at contract ``version`` (the newest: it
    accepts every older minor version's records too)."""
    schema = json.loads(schema_path(name, version).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def first_error(name: str, document: Any, version: str = LATEST) -> str | None:
    error = jsonschema.exceptions.best_match(validator(name, version).iter_errors(document))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{where}: {error.message[:300]}"


def parse_time(text: str) -> datetime:
    """An RFC 3339 timestamp with an explicit offset, as a UTC datetime."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return value.astimezone(timezone.utc)


def format_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def envelope(event_type: str, event_id: str, source: str, time: datetime, data: dict[str, Any],
             subject: str | None = None) -> dict[str, Any]:
    """The CloudEvents 1.0 structured-mode document every record of the worker is."""
    document: dict[str, Any] = {"specversion": "1.0", "id": event_id, "source": source,
                                "type": event_type, "time": format_time(time)}
    if subject is not None:
        document["subject"] = subject
    document.update(datacontenttype="application/json", data=data)
    return document


def worker_source(worker_id: str) -> str:
    return f"urn:moderation:worker:{worker_id}"


Record = tuple[str, "bytes | None", "bytes | None"]
"""One output record: topic, key, value (None: a tombstone)."""


class Applied(NamedTuple):
    """What one record of a side topic turned into: the log's fields (``kind`` names the
    handler) and the records to deliver with its offset, at least one."""

    fields: dict[str, Any]
    records: list[Record]


@dataclass(frozen=True)
class UploadEvent:
    event_id: str
    source: str
    video_id: str
    uploader: str
    video_uri: str
    uploaded_at: datetime
    content_hash: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    declaration: Declaration | None = None  # the uploader's, from contract 1.2


def checked_document(value: bytes | None, max_bytes: int, schema: str, type_prefix: str,
                     event_type: str, time_fields: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON document of one record value, valid against ``schema``, whose CloudEvents
    ``time`` and ``data`` fields ``time_fields`` are timestamps with a UTC offset; else
    :class:`DeadLetter`.

    A CloudEvents ``type`` under ``type_prefix`` other than ``event_type`` is another version
    of the same contract: it gets its own reason code, so that it can be replayed by a worker
    that reads it rather than be mistaken for garbage.
    """
    if value is None:
        raise DeadLetter(dead_letters.INVALID_JSON, "the record has no value (a tombstone?)")
    if len(value) > max_bytes:
        raise DeadLetter(dead_letters.EVENT_TOO_LARGE, f"{len(value)} bytes is over the {max_bytes}-byte limit")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:  # json.loads(bytes) would guess UTF-16 or UTF-32
        raise DeadLetter(dead_letters.INVALID_JSON,
                         f"not UTF-8 (CloudEvents JSON is UTF-8): {exc.reason} at byte {exc.start}") from None
    if text.startswith("\ufeff"):
        raise DeadLetter(dead_letters.INVALID_JSON,
                         "starts with a byte-order mark: CloudEvents JSON is UTF-8 without one")
    if "\x00" in text:  # never in JSON text; UTF-16 or UTF-32 without a byte-order mark
        raise DeadLetter(dead_letters.INVALID_JSON,
                         "holds NUL bytes (UTF-16 or UTF-32?): CloudEvents JSON is UTF-8")
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DeadLetter(dead_letters.INVALID_JSON, f"not JSON: {str(exc)[:200]}") from None
    if isinstance(document, dict):
        kind = document.get("type")
        if isinstance(kind, str) and kind.startswith(type_prefix) and kind != event_type:
            raise DeadLetter(dead_letters.UNSUPPORTED_SCHEMA_VERSION,
                             f"event type {kind[:100]!r}; this worker reads {event_type}")
    try:
        problem = first_error(schema, document)
    except RecursionError:  # JSON nested just under the parser's limit
        raise DeadLetter(dead_letters.SCHEMA_VIOLATION, "the JSON is nested too deeply") from None
    if problem is not None:
        raise DeadLetter(dead_letters.SCHEMA_VIOLATION, problem)
    try:
        parse_time(document["time"])
        for field_name in time_fields:
            parse_time(document["data"][field_name])
    except ValueError as exc:
        raise DeadLetter(dead_letters.SCHEMA_VIOLATION, f"bad timestamp: {exc}") from None
    return document


def parse_upload_event(value: bytes | None, max_bytes: int) -> UploadEvent:
    """Validate one Kafka record value; raise :class:`DeadLetter` with the reason if it is bad."""
    document = checked_document(value, max_bytes, "upload-event", _UPLOAD_TYPE_PREFIX, UPLOAD_TYPE,
                                ("uploaded_at",))
    data = document["data"]
    uploaded_at = parse_time(data["uploaded_at"])
    return UploadEvent(
        event_id=document["id"],
        source=document["source"],
        video_id=data["video_id"],
        uploader=data["uploader"],
        video_uri=data["video_uri"],
        uploaded_at=uploaded_at,
        content_hash=data.get("content_hash"),
        metadata=dict(data.get("metadata", {})),
        declaration=_declaration(data.get("declaration")),
    )


def _declaration(document: dict | None) -> Declaration | None:
    if document is None:
        return None
    return Declaration(synthetic=document["synthetic"], kind=document.get("kind"), tool=document.get("tool"))


def declaration_json(declaration: Declaration) -> dict[str, Any]:
    document: dict[str, Any] = {"synthetic": declaration.synthetic}
    if declaration.kind is not None:
        document["kind"] = declaration.kind
    if declaration.tool is not None:
        document["tool"] = declaration.tool
    return document


def upload_event(video_id: str, video_uri: str, uploader: str, *, event_id: str | None = None,
                 uploaded_at: datetime | None = None, source: str = "urn:moderation:uploader",
                 content_hash: str | None = None, metadata: dict | None = None,
                 declaration: Declaration | None = None) -> bytes:
    """Serialise an upload event, as an upload service (or the quick start) publishes it."""
    now = uploaded_at or datetime.now(timezone.utc)
    data: dict[str, Any] = {"video_id": video_id, "uploader": uploader,
                            "video_uri": video_uri, "uploaded_at": format_time(now)}
    if content_hash:
        data["content_hash"] = content_hash
    if metadata:
        data["metadata"] = metadata
    if declaration is not None:
        data["declaration"] = declaration_json(declaration)
    document = envelope(UPLOAD_TYPE, event_id or str(uuid.uuid4()), source, now, data)
    if declaration is not None:  # a 1.2 event names its file, as a 1.1 or 1.2 verdict does
        document["dataschema"] = validator("upload-event", "1.2").schema["$id"]
    return checked_json("upload-event", document)


def local_upload(target: Path | str, uploader: str, video_id: str | None = None) -> UploadEvent:
    """The upload event of a local file (or of a URI as given), as an uploader would send it:
    for scoring, evaluating or benchmarking without Kafka. Raises DeadLetter for a target no
    upload event may name (a URI of another scheme)."""
    target = str(target)
    uri = target if "://" in target else Path(target).resolve().as_uri()
    name = video_id or (Path(target).stem or "video")[:256]
    try:
        return parse_upload_event(upload_event(name, uri, uploader), 1 << 20)
    except ValueError as exc:  # as the worker would dead-letter such an event
        raise DeadLetter(dead_letters.SCHEMA_VIOLATION, str(exc).split(": ", 1)[-1]) from None


@dataclass(frozen=True)
class ModelInfo:
    """What the verdict says about the model, and the pure parts of its model file the
    pipeline applies: the per-track aggregation and the calibration (None: uncalibrated)."""

    name: str
    version: str
    checkpoint_sha256: str                       # the first (or only) checkpoint's
    checkpoint_sha256s: tuple[str, ...] = ()     # every ensemble member's, in file order
    backend: str = ""
    aggregation: Aggregation = Aggregation()
    calibration: Calibration | None = None

    @property
    def all_sha256s(self) -> tuple[str, ...]:
        return self.checkpoint_sha256s or (self.checkpoint_sha256,)


@dataclass(frozen=True)
class BankCheck:
    """The hash bank's answer for one upload, evidence the verdict carries."""

    fingerprint: str                    # the upload's fingerprint, vPDQ text (for exchange)
    match: KnownContentMatch | None     # a positive-bank match not vetoed by a negative bank
    fingerprint_full: str | None = None  # with the robustness hashes, for our own bank


@dataclass(frozen=True)
class Verdict:
    """The takedown recommendation for one upload event."""

    event: UploadEvent
    decision: str
    reasons: tuple[str, ...]
    video_score: float | None
    tracks: tuple[FaceTrack, ...]
    frames_sampled: int
    model: ModelInfo | None
    policy_version: str
    stage_seconds: dict[str, float]
    video_bytes: int = 0
    bank: BankCheck | None = None         # the hash bank's check, when the bank ran
    raw_video_score: float | None = None  # the model's own score, before calibration
    decisive_track_id: int | None = None  # the track whose score is the video score
    credentials: Credentials | None = None  # the upload's content credentials, when read
    label: Label | None = None              # the synthetic-content label it needs
    legal_order: dict | None = None         # the order a legal_order takedown executes

    @property
    def face_count(self) -> int:
        return sum(len(t.detections) for t in self.tracks)

    @property
    def known_content(self) -> KnownContentMatch | None:
        return None if self.bank is None else self.bank.match

    @property
    def fingerprint(self) -> str | None:
        """The upload's vPDQ text, published in the verdict."""
        return None if self.bank is None else self.bank.fingerprint


def checked_json(name: str, document: dict, version: str = LATEST) -> bytes:
    problem = first_error(name, document, version)
    if problem is not None:
        raise ValueError(f"refusing to publish an invalid {name} record: {problem}")
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def round_score(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)


def latency_seconds(verdict: "Verdict", published_at: datetime,
                    received_at: datetime | None = None) -> dict[str, float | None]:
    """Each stage's seconds; ``end_to_end`` to ``published_at`` from ``received_at`` (the
    upload record's Kafka timestamp: the platform's clock) or, without one, from the event's
    ``uploaded_at``; and ``since_uploaded_at``, from the producer's claim."""
    latency = {k: round_score(v) for k, v in verdict.stage_seconds.items()}
    claimed = round_score((published_at - verdict.event.uploaded_at).total_seconds())
    latency["end_to_end"] = claimed if received_at is None else round_score(
        (published_at - received_at).total_seconds())
    latency["since_uploaded_at"] = claimed
    return latency


def output_id(position: "SourcePosition", kind: str) -> str:
    """The CloudEvents id of the one output of the input record at ``position``."""
    return str(uuid.uuid5(_OUTPUT_ID_NAMESPACE,
                          f"{kind}/{position.topic}/{position.partition}/{position.offset}"))


def verdict_record(verdict: Verdict, worker_id: str, published_at: datetime,
                   position: "SourcePosition | None" = None,
                   received_at: datetime | None = None, version: str = LATEST,
                   event_id: str | None = None) -> tuple[bytes, bytes]:
    """Key (the video id) and value of the verdict record; ``end_to_end`` runs from
    ``received_at`` (the upload record's Kafka timestamp) to ``published_at``. ``version``:
    the contract's minor version to write (a 1.0 verdict leaves the 1.1 fields out).

    With the input's ``position`` the id is derived from it, so consumers can drop a
    redelivered copy; without one (scoring a file) it is random; ``event_id`` sets it.
    """
    tracks = [{
        "track_id": t.track_id,
        "score": round_score(t.score),
        "detections": [{
            "frame_index": d.frame_index,
            "timestamp_s": round_score(d.timestamp_s),
            "box": [round(float(c), 2) for c in d.box],
            "detection_confidence": round_score(d.confidence),
            "score": round_score(d.score),
        } for d in t.detections],
    } for t in verdict.tracks]
    model = None if verdict.model is None else _model_json(verdict.model)
    if event_id is None:
        event_id = output_id(position, "verdict") if position else str(uuid.uuid4())
    document = envelope(VERDICT_TYPE, event_id,
                        worker_source(worker_id), published_at, {
        "source_event_id": verdict.event.event_id,
        "video_id": verdict.event.video_id,
        "decision": verdict.decision,
        "reasons": list(verdict.reasons),
        "video_score": round_score(verdict.video_score),
        "face_count": verdict.face_count,
        "frames_sampled": verdict.frames_sampled,
        "tracks": tracks,
        "model": model,
        "policy_version": verdict.policy_version,
        "latency_seconds": latency_seconds(verdict, published_at, received_at),
        "worker_id": worker_id,
    }, subject=verdict.event.video_id)
    if verdict.model is not None:
        document["data"]["raw_video_score"] = round_score(verdict.raw_video_score)
        document["data"]["decisive_track_id"] = verdict.decisive_track_id
    if verdict.known_content is not None:
        match = verdict.known_content
        document["data"]["known_content"] = {
            "entry_id": match.entry_id, "source_video_id": match.source_video_id,
            "query_match_percent": round_score(match.query_match_percent, 3),
            "entry_match_percent": round_score(match.entry_match_percent, 3),
            "median_distance": round_score(match.median_distance, 3)}
    if verdict.fingerprint is not None:
        document["data"]["fingerprint_vpdq"] = verdict.fingerprint
    written = VERSIONS.index(version)
    if written >= VERSIONS.index("1.1"):
        document["dataschema"] = validator("verdict", version).schema["$id"]
        if verdict.credentials is not None:
            document["data"]["credentials"] = verdict.credentials.to_json()
    if written >= VERSIONS.index("1.2"):
        if verdict.label is not None:
            document["data"]["label"] = {"status": verdict.label.status, "kind": verdict.label.kind,
                                         "basis": list(verdict.label.basis), "rule": verdict.label.rule}
        if verdict.event.declaration is not None:
            document["data"]["declaration"] = declaration_json(verdict.event.declaration)
    if written >= VERSIONS.index("1.3") and verdict.legal_order is not None:
        document["data"]["legal_order"] = verdict.legal_order
    return verdict.event.video_id.encode(), checked_json("verdict", document, version)


def _model_json(model: ModelInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"name": model.name, "version": model.version,
                           "checkpoint_sha256": model.checkpoint_sha256,
                           "checkpoint_sha256s": list(model.all_sha256s),
                           "aggregation": model.aggregation.label}
    if model.backend:
        out["backend"] = model.backend
    cal = model.calibration
    if cal is None:
        out["calibration"] = None
    else:
        table = {k: v for k, v in cal.to_mapping().items() if k != "validation"}
        out["calibration"] = table
    return out


@dataclass(frozen=True)
class SourcePosition:
    topic: str
    partition: int
    offset: int


# Kafka's default message.max.bytes is about 1 MB; base64 grows the original by a third.
MAX_ORIGINAL_BYTES = 512 * 1024


def dead_letter_record(failure: DeadLetter, value: bytes | None, key: bytes | None,
                       position: SourcePosition, worker_id: str, published_at: datetime,
                       event: UploadEvent | None = None) -> tuple[bytes | None, bytes]:
    """Key and value of a dead-letter record that keeps the original bytes for replay.

    An original over ``MAX_ORIGINAL_BYTES`` (only an oversized event can be) keeps its first
    bytes and says so, so that the dead letter itself still fits in a Kafka record.
    """
    truncated = value is not None and len(value) > MAX_ORIGINAL_BYTES
    if truncated:
        value = value[:MAX_ORIGINAL_BYTES]
    def b64(raw: bytes | None) -> str | None:
        return None if raw is None else base64.b64encode(raw).decode()

    document = envelope(DEAD_LETTER_TYPE, output_id(position, "dead-letter"), worker_source(worker_id),
                        published_at, {
        "reason": failure.reason,
        "message": failure.message[:2000],
        "original_value_base64": b64(value) or "",
        "original_value_truncated": truncated,
        "original_key_base64": b64(key),
        "source_topic": position.topic,
        "source_partition": position.partition,
        "source_offset": position.offset,
        "source_event_id": event.event_id if event else None,
        "video_id": event.video_id if event else None,
        "worker_id": worker_id,
    }, subject=event.video_id if event is not None else None)
    return key, checked_json("dead-letter", document)
