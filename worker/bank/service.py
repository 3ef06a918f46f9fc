"""The known-content bank as the pipeline sees it: fingerprint an upload's hash frames and
look them up in this worker's index, which the bank-topic follower keeps current."""
from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np

from worker.bank.entries import NEGATIVE, BankEntry
from worker.bank.fingerprint import HashingConfig, VideoFingerprint, fingerprint_frames
from worker.bank.index import BankIndex
from worker.bank.matching import MatchRule
from worker.core.pipeline import BankCheck
from worker.core.policy import KnownContentMatch


def match_rule(bank: Any) -> MatchRule:
    """The match rule of a ``[bank]`` config section (:class:`worker.config.BankConfig`)."""
    return MatchRule(entry_threshold_pct=bank.entry_threshold_pct,
                     query_threshold_pct=bank.query_threshold_pct,
                     clip_query_threshold_pct=bank.clip_query_threshold_pct,
                     clip_min_frames=bank.clip_min_frames, entry_slot_s=1.0 / bank.hash_rate_hz)


def entry_fingerprint(entry: BankEntry) -> VideoFingerprint:
    """The full fingerprint (with the robustness hashes) when the entry has one; else the
    plain vPDQ frames that another platform shared."""
    if entry.fingerprint:
        return VideoFingerprint.from_json(entry.fingerprint)
    return VideoFingerprint.from_vpdq_text(entry.fingerprint_vpdq)


class HashBank:
    """``KnownContentBank`` over a :class:`BankIndex`; the follower calls ``apply``/``remove``."""

    def __init__(self, index: BankIndex | None = None, hashing: HashingConfig = HashingConfig()):
        self.index = index or BankIndex()
        self.hashing = hashing
        self._sources: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def apply(self, entry: BankEntry) -> None:
        self.index.add(entry.entry_id, entry_fingerprint(entry), negative=entry.bank == NEGATIVE)
        with self._lock:
            self._sources[entry.entry_id] = entry.source_video_id

    def remove(self, entry_id: str) -> None:
        self.index.remove(entry_id)
        with self._lock:
            self._sources.pop(entry_id, None)

    def check(self, frames: np.ndarray, frame_indices: Sequence[int],
              timestamps_s: Sequence[float]) -> BankCheck:
        fingerprint = fingerprint_frames(frames, timestamps_s, frame_indices, self.hashing)
        positives = [m for m in self.index.search(fingerprint) if not m.negative]
        match = None
        if positives:
            best = positives[0]
            with self._lock:
                source = self._sources.get(best.entry_id)
            match = KnownContentMatch(best.entry_id, source, best.query_matched_pct,
                                      best.entry_matched_pct, best.median_distance)
        return BankCheck(fingerprint=fingerprint.to_vpdq_text(), match=match,
                         fingerprint_full=fingerprint.bank_side().to_json())
