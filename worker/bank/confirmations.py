"""Reviewer confirmations: a person's decision on an upload becomes hash-bank changes.

A review tool publishes a ``reviewer-confirmation`` event (``schemas/v1``) on
``bank.confirmation_topic``. The worker's consumer group reads that topic next to the upload
topic, and each confirmation, like each upload, becomes its output records and its offset
commit in one Kafka transaction (:mod:`worker.runtime.delivery`): the bank-entry records it adds or
deletes on the bank topic, or one dead-letter record with a reason code if the event is bad.
Every worker's bank follower then picks the change up from the compacted bank topic.

What each decision does, to the entries of the video (ids from the video id, so that a
redelivered or retried confirmation rewrites the same records, and the latest decision
about a video wins):

- ``confirmed_takedown``: adds ``review-positive:<video>`` to the positive bank and deletes
  ``review-negative:<video>`` (an earlier confirmed_allow);
- ``confirmed_allow``: adds ``review-negative:<video>`` to the negative bank (known-good
  content that must never match) and deletes the positive entries of the video (the
  worker's automatic ``takedown:<video>`` and ``review-positive:<video>``);
- ``rejected``: deletes the positive entries of the video, and ``entry_id`` if the event
  names one (the entry a rejected known-content verdict matched).

The fingerprint: with ``video_uri`` the worker fetches and decodes the video with its own
fetcher and sampler (same URI rules and limits as uploads) and fingerprints it with the
robustness hashes; without one it uses ``fingerprint_vpdq`` copied from the verdict, which
carries plain vPDQ hashes only (re-encodes, scaling and mirrors still match, crops less so).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from worker.bank.entries import NEGATIVE, POSITIVE, BankEntry, automatic_entry_id, entry_record
from worker.bank.fingerprint import HashingConfig, VideoFingerprint, fingerprint_entry
from worker.core import dead_letters
from worker.core.dead_letters import DeadLetter
from worker.core.events import Applied, Record, checked_document, parse_time

CONFIRMATION_TYPE = "dev.moderation.reviewer-confirmation.v1"
_TYPE_PREFIX = "dev.moderation.reviewer-confirmation."
CONFIRMED_TAKEDOWN = "confirmed_takedown"
CONFIRMED_ALLOW = "confirmed_allow"
REJECTED = "rejected"


@dataclass(frozen=True)
class Confirmation:
    event_id: str
    video_id: str
    decision: str
    reviewer: str
    reason: str
    decided_at: datetime
    verdict_id: str | None = None
    video_uri: str | None = None
    fingerprint_vpdq: str | None = None
    entry_id: str | None = None


def reviewed_entry_id(video_id: str, bank: str) -> str:
    return f"review-{bank}:{video_id}"


def parse_confirmation(value: bytes | None, max_bytes: int) -> Confirmation:
    """A valid confirmation, or :class:`DeadLetter` with the reason it is not one."""
    document = checked_document(value, max_bytes, "reviewer-confirmation", _TYPE_PREFIX,
                                CONFIRMATION_TYPE, ("decided_at",))
    data = document["data"]
    decided_at = parse_time(data["decided_at"])
    return Confirmation(
        event_id=document["id"], video_id=data["video_id"], decision=data["decision"],
        reviewer=data["reviewer"], reason=data["reason"], decided_at=decided_at,
        verdict_id=data.get("verdict_id"), video_uri=data.get("video_uri"),
        fingerprint_vpdq=data.get("fingerprint_vpdq"), entry_id=data.get("entry_id"))


def bank_changes(confirmation: Confirmation, fingerprint: VideoFingerprint | None,
                 bank_topic: str) -> list[Record]:
    """The bank-topic records a confirmation turns into (see the module docstring)."""
    video = confirmation.video_id
    positives = [automatic_entry_id(video), reviewed_entry_id(video, POSITIVE)]
    if confirmation.decision == REJECTED:
        doomed = positives + ([confirmation.entry_id] if confirmation.entry_id else [])
        return [(bank_topic, entry_id.encode(), None) for entry_id in dict.fromkeys(doomed)]
    if fingerprint is None:
        raise ValueError(f"{confirmation.decision} needs a fingerprint")
    bank = POSITIVE if confirmation.decision == CONFIRMED_TAKEDOWN else NEGATIVE
    entry = BankEntry(
        entry_id=reviewed_entry_id(video, bank), bank=bank,
        fingerprint_vpdq=fingerprint.to_vpdq_text(),
        reason=f"{confirmation.decision}: {confirmation.reason}"[:2000],
        added_by=confirmation.reviewer, added_at=confirmation.decided_at,
        source_video_id=video,
        fingerprint=fingerprint.bank_side().to_json() if confirmation.video_uri else None)
    doomed = [reviewed_entry_id(video, NEGATIVE)] if bank == POSITIVE else positives
    return [(bank_topic, *entry_record(entry)),
            *((bank_topic, entry_id.encode(), None) for entry_id in doomed)]


class Fingerprinter(Protocol):
    def fingerprint(self, uri: str) -> VideoFingerprint:
        """The video's full fingerprint; raises DeadLetter (fetch and decode reasons)."""


class VideoFingerprinter:
    """Fetch, decode and fingerprint a video as a bank entry, with the pipeline's fetcher (its
    URI rules) and a sampler of the same kind whose hash frames are dense
    (``bank.entry_hash_rate_hz``), thinned by :func:`fingerprint_entry` to the frames that
    differ by more than ``keep_distance`` bits: a trimmed re-upload's one-a-second frames land
    near one of them at any phase."""

    def __init__(self, fetcher: Any, sampler: Any, hashing: HashingConfig = HashingConfig(),
                 keep_distance: int = 16, seconds_per_frame: float = 1.0):
        self.fetcher = fetcher
        self.sampler = sampler
        self.hashing = hashing
        self.keep_distance = keep_distance
        self.seconds_per_frame = seconds_per_frame

    def fingerprint(self, uri: str) -> VideoFingerprint:
        with self.fetcher.fetch(uri) as path:
            sampled = self.sampler.sample(path, 1)
        if sampled.hash_frames is None or not len(sampled.hash_frames):
            raise DeadLetter(dead_letters.NO_FRAMES, "no frames to fingerprint (is the bank's hashing on?)")
        return fingerprint_entry(sampled.hash_frames, sampled.hash_timestamps_s, sampled.hash_indices,
                                 self.hashing, self.keep_distance, self.seconds_per_frame)


class ConfirmationHandler:
    """One confirmation record in, its bank-topic records out; raises DeadLetter."""

    def __init__(self, topic: str, bank_topic: str, fingerprinter: Fingerprinter,
                 max_event_bytes: int = 256 * 1024):
        self.topic = topic
        self.bank_topic = bank_topic
        self.fingerprinter = fingerprinter
        self.max_event_bytes = max_event_bytes

    def handle(self, value: bytes | None) -> tuple[Confirmation, list[Record]]:
        confirmation = parse_confirmation(value, self.max_event_bytes)
        fingerprint = None
        if confirmation.decision != REJECTED:
            if confirmation.video_uri:
                fingerprint = self.fingerprinter.fingerprint(confirmation.video_uri)
            else:
                try:
                    fingerprint = VideoFingerprint.from_vpdq_text(confirmation.fingerprint_vpdq or "")
                except ValueError as exc:
                    raise DeadLetter(dead_letters.SCHEMA_VIOLATION, f"data/fingerprint_vpdq: {exc}") from None
            if not fingerprint.frames:
                raise DeadLetter(dead_letters.NO_FRAMES, "the fingerprint has no frames")
        return confirmation, bank_changes(confirmation, fingerprint, self.bank_topic)

    def handle_record(self, record: Any) -> Applied:
        """The runner's side-topic port: log fields and the records to deliver."""
        confirmation, records = self.handle(record.value)
        return Applied({"kind": "reviewer confirmation", "video_id": confirmation.video_id,
                        "decision": confirmation.decision, "reviewer": confirmation.reviewer}, records)
