"""A FAISS index over every hash of a bank, so that lookup does not scan every entry.

Each usable hash of each entry is a row of a FAISS multi-index hash (``IndexBinaryMultiHash``:
the 256 bits split into 16 chunks of 16). A range search returns the rows within the match
distance of each query hash, and those are the close hash pairs from which the exact video
rule of :mod:`worker.bank.matching` is computed, by the same function as the linear scan.

Which rows the search sees depends on the probes. By default only chunks equal to the query's
are probed: a pair within 31 bits is seen unless all 16 of its chunks differ (measured on
random hashes: always up to 16 bits apart, 99.9% at 20, 99.2% at 24, 91% at 31). A video
match rests on many frames, each with several hashes, so that loses next to nothing, and it
is fast: 86 ms against 3M rows where the exact search takes 1.4 s. ``exact=True`` also
probes every one-bit change of each chunk; then nothing is missed, since two hashes at most
31 bits apart differ in at most one bit on at least one of 16 chunks, and the answer is the
linear scan's.

Removal leaves a tombstone (this FAISS index cannot delete cheaply); the index is rebuilt
from its live rows when tombstones are the majority. One writer and many readers may use an
index at once: searches share a lock that additions and removals take alone.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import faiss
import numpy as np

from .fingerprint import HASH_BYTES, VideoFingerprint
from .matching import BankMatch, HashRows, MatchRule, hash_rows, sort_matches, video_match

_BITS = 8 * HASH_BYTES


@dataclass(frozen=True)
class IndexStats:
    entries: int
    negative_entries: int
    rows: int
    tombstoned_rows: int


class BankIndex:
    """Positive and negative bank entries, searchable by a query fingerprint."""

    def __init__(self, rule: MatchRule = MatchRule(), chunks: int = 16, exact: bool = False):
        if _BITS % chunks:
            raise ValueError("chunks must divide 256")
        self.rule = rule
        self._chunks = chunks
        # Pigeonhole: within max_distance, some chunk is off by max_distance // chunks bits at most.
        self._nflip = rule.max_distance // chunks if exact else 0
        self._lock = _ReadWriteLock()
        self._faiss = self._new_faiss()
        self._row_entry = _Growable((), np.int32)
        self._row_frame = _Growable((), np.int32)
        self._row_slot = _Growable((), np.int32)
        self._entry_ids: list[str] = []
        self._entry_frames = _Growable((), np.int32)
        self._entry_rows = _Growable((), np.int64)
        self._entry_negative = _Growable((), np.bool_)
        self._entry_alive = _Growable((), np.bool_)
        self._number_of: dict[str, int] = {}
        self._dead_rows = 0

    def add(self, entry_id: str, fingerprint: VideoFingerprint, negative: bool = False) -> None:
        """Adds an entry, or replaces the entry with that id."""
        self.add_many([(entry_id, fingerprint)], negative)

    def add_many(self, entries: Iterable[tuple[str, VideoFingerprint | HashRows]],
                 negative: bool = False) -> None:
        """Adds entries in one FAISS call: for loading a bank. ``HashRows`` (already
        filtered by this index's rule) skip fingerprint parsing, for synthetic banks."""
        prepared = [(entry_id, rows if isinstance(rows, HashRows)
                     else hash_rows(rows, self.rule, mirrored=False))
                    for entry_id, rows in entries]
        with self._lock.writing():
            bits, row_entry, row_frame, row_slot = [], [], [], []
            for entry_id, rows in prepared:
                self._tombstone(entry_id)
                number = len(self._entry_ids)
                self._entry_ids.append(entry_id)
                self._number_of[entry_id] = number
                self._entry_frames.append(rows.slots)
                self._entry_rows.append(len(rows.bits))
                self._entry_negative.append(negative)
                self._entry_alive.append(rows.frame_count > 0)
                bits.append(rows.bits)
                row_entry.append(np.full(len(rows.bits), number, np.int32))
                row_frame.append(rows.frame)
                row_slot.append(rows.row_slots())
            if prepared:
                self._add_rows(np.concatenate(bits), np.concatenate(row_entry),
                               np.concatenate(row_frame), np.concatenate(row_slot))

    def remove(self, entry_id: str) -> bool:
        """Removes an entry; False if there was none."""
        with self._lock.writing():
            removed = self._tombstone(entry_id)
            if self._dead_rows > max(1024, len(self._row_entry) // 2):
                self._rebuild()
            return removed

    def __contains__(self, entry_id: str) -> bool:
        with self._lock.reading():
            return entry_id in self._number_of

    def stats(self) -> IndexStats:
        with self._lock.reading():
            alive = self._entry_alive.view()
            return IndexStats(entries=len(self._number_of),
                              negative_entries=int((alive & self._entry_negative.view()).sum()),
                              rows=len(self._row_entry), tombstoned_rows=self._dead_rows)

    def search(self, query: VideoFingerprint) -> list[BankMatch]:
        """Every entry the query matches by the rule: positive ones first, then negative."""
        return self.search_rows(hash_rows(query, self.rule, mirrored=True))

    def search_rows(self, q: HashRows) -> list[BankMatch]:
        """:meth:`search` for a query already reduced to its usable hashes (mirrored too)."""
        if q.frame_count == 0:
            return []
        with self._lock.reading():
            if self._faiss.ntotal == 0:
                return []
            limits, distances, rows = self._faiss.range_search(q.bits, self.rule.max_distance + 1)
            entries = self._row_entry.view()[rows]
            alive = self._entry_alive.view()[entries]
            query_row = np.repeat(np.arange(len(q.bits)), np.diff(limits.astype(np.int64)))
            query_frame = q.frame[query_row][alive]
            entry_frame = self._row_frame.view()[rows][alive]
            entry_slot = self._row_slot.view()[rows][alive]
            entries, distances = entries[alive], distances[alive].astype(np.int32)
            negative = self._entry_negative.view()[entries]
            frames = self._entry_frames.view()
            ids = self._entry_ids
            known_good = np.zeros(q.frame_count, dtype=bool)
            known_good[query_frame[negative]] = True
            found = []
            for number, at in _groups(entries):
                is_negative = bool(negative[at[0]])
                match = video_match(query_frame[at], entry_frame[at], distances[at],
                                    q.frame_count, int(frames[number]), self.rule,
                                    None if is_negative else known_good, entry_slot[at])
                if match.is_match:
                    found.append(BankMatch.of(ids[number], is_negative, match))
        return sort_matches(found)

    def _tombstone(self, entry_id: str) -> bool:
        number = self._number_of.pop(entry_id, None)
        if number is None:
            return False
        if self._entry_alive.view()[number]:
            self._entry_alive.view()[number] = False
            self._dead_rows += int(self._entry_rows.view()[number])
        return True

    def _add_rows(self, bits: np.ndarray, row_entry: np.ndarray, row_frame: np.ndarray,
                  row_slot: np.ndarray) -> None:
        if len(bits):
            self._faiss.add(np.ascontiguousarray(bits))
            self._row_entry.extend(row_entry)
            self._row_frame.extend(row_frame)
            self._row_slot.extend(row_slot)

    def _rebuild(self) -> None:
        live = self._entry_alive.view()[self._row_entry.view()]
        # The rows' bits are read back from FAISS's own storage rather than kept twice.
        stored = faiss.vector_to_array(faiss.downcast_IndexBinary(self._faiss.storage).xb)
        bits = stored.reshape(-1, HASH_BYTES)[live]
        row_entry, row_frame = self._row_entry.view()[live], self._row_frame.view()[live]
        row_slot = self._row_slot.view()[live]
        self._faiss = self._new_faiss()
        self._row_entry, self._row_frame = _Growable((), np.int32), _Growable((), np.int32)
        self._row_slot = _Growable((), np.int32)
        self._dead_rows = 0
        self._add_rows(bits, row_entry, row_frame, row_slot)

    def _new_faiss(self):
        index = faiss.IndexBinaryMultiHash(_BITS, self._chunks, _BITS // self._chunks)
        index.nflip = self._nflip
        return index


def _groups(keys: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(key, positions holding it) for each distinct key."""
    if len(keys) == 0:
        return
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    for start, end in zip(starts, np.r_[starts[1:], len(keys)]):
        yield int(sorted_keys[start]), order[start:end]


class _Growable:
    """A numpy array that grows by doubling, so appending one entry at a time stays cheap."""

    def __init__(self, shape: tuple[int, ...], dtype):
        self._data = np.empty((16, *shape), dtype=dtype)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def view(self) -> np.ndarray:
        return self._data[:self._size]

    def append(self, value) -> None:
        self.extend(np.asarray([value], dtype=self._data.dtype))

    def extend(self, values: np.ndarray) -> None:
        needed = self._size + len(values)
        if needed > len(self._data):
            grown = np.empty((max(needed, 2 * len(self._data)), *self._data.shape[1:]),
                             dtype=self._data.dtype)
            grown[:self._size] = self._data[:self._size]
            self._data = grown
        self._data[self._size:needed] = values
        self._size = needed


class _ReadWriteLock:
    """Many readers or one writer. A waiting writer holds back new readers, so a stream of
    searches cannot starve bank updates."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def reading(self):
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def writing(self):
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()
