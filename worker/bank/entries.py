"""Hash-bank entries as records of the compacted bank topic (``schemas/v1/bank-entry``).

The key is the entry id, so compaction keeps the latest version of each entry and a
tombstone (null value) deletes it. Entries written from the worker's own takedowns get an
id derived from the video id (``takedown:<video id>``), so a retried transaction rewrites the
same entry, and a reviewer's rejection of the takedown can name it from the verdict alone.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime

from worker.core.events import checked_json, envelope, first_error, format_time, parse_time

BANK_ENTRY_TYPE = "dev.moderation.bank-entry.v1"
POSITIVE = "positive"
NEGATIVE = "negative"


@dataclass(frozen=True)
class BankEntry:
    entry_id: str
    bank: str
    fingerprint_vpdq: str
    reason: str
    added_by: str
    added_at: datetime
    source_video_id: str | None = None
    fingerprint: str | None = None  # the full fingerprint (robustness hashes included), JSON


def entry_record(entry: BankEntry) -> tuple[bytes, bytes]:
    document = envelope(BANK_ENTRY_TYPE, str(uuid.uuid4()), f"urn:moderation:bank:{entry.added_by}",
                        entry.added_at, {
        "entry_id": entry.entry_id, "bank": entry.bank, "fingerprint_vpdq": entry.fingerprint_vpdq,
        "source_video_id": entry.source_video_id, "reason": entry.reason,
        "added_by": entry.added_by, "added_at": format_time(entry.added_at)}, subject=entry.entry_id)
    if entry.fingerprint:
        document["data"]["fingerprint"] = entry.fingerprint
    return entry.entry_id.encode(), checked_json("bank-entry", document)


def parse_entry_record(key: bytes | None, value: bytes | None) -> BankEntry | str:
    """A bank entry, or the entry id of a tombstone. Raises ValueError for a bad record."""
    if value is None:
        if not key:
            raise ValueError("a tombstone without a key")
        return key.decode()
    document = json.loads(value)
    problem = first_error("bank-entry", document)
    if problem is not None:
        raise ValueError(problem)
    data = document["data"]
    return BankEntry(entry_id=data["entry_id"], bank=data["bank"],
                     fingerprint_vpdq=data["fingerprint_vpdq"], reason=data["reason"],
                     added_by=data["added_by"], added_at=parse_time(data["added_at"]),
                     source_video_id=data.get("source_video_id"), fingerprint=data.get("fingerprint"))


def automatic_entry_id(video_id: str) -> str:
    """The id of the entry a model's takedown of this video adds."""
    return f"takedown:{video_id}"


def takedown_entry(video_id: str, fingerprint_vpdq: str, worker_id: str, now: datetime,
                   fingerprint: str | None = None) -> BankEntry:
    """The entry a takedown verdict adds, so every re-upload is caught by every worker."""
    return BankEntry(entry_id=automatic_entry_id(video_id), bank=POSITIVE,
                     fingerprint_vpdq=fingerprint_vpdq, reason="takedown_verdict",
                     added_by=f"worker:{worker_id}", added_at=now, source_video_id=video_id,
                     fingerprint=fingerprint)
