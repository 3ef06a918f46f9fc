"""Bank lookup that does not scan every entry: multi-index hashing to shortlist entries, then
the exact video rule on each shortlisted entry.

Every usable hash of every entry is a row. Its 256 bits are cut into byte-aligned chunks, and
for each chunk the index keeps the rows sorted by that chunk's value. Two hashes within the
match distance agree exactly on some chunk unless the difference is spread over all of them,
so looking up each query hash's chunk values (binary searches in the sorted columns) finds the
rows that may be close; their distances are then computed exactly. Any entry with at least one
row within the distance is shortlisted, and the video rule of :mod:`worker.bank.matching` is
computed for it from ALL of its rows against all of the query's (a few hundred by a few
hundred hashes), by the same function as the linear scan. So a shortlisted entry gets exactly
the linear scan's answer; only an entry none of whose pairs was found can be missed.

Chunk widths trade noise against reach. By default 10 chunks of 3 bytes and one of 2: at 30M
rows a 24-bit value is shared by about 2 random rows, so a query's lookups return hundreds of
rows, not millions (16-bit chunks return ~460 random rows each, which is what made a 1M-entry
lookup take a second with FAISS's multi-index hash). Measured on random hashes, one pair is
found at 8 bits apart always, at 16 bits 97 % of the time, at 20 87 %, at 25 66 %, at 31 42 %;
a video match rests on many frames, each with several hashes, and one found pair is enough
to shortlist the entry. ``exact=True`` uses 16 chunks of 2 bytes and also probes every
one-bit change of each: two hashes at most 31 bits apart differ in at most one bit on at least
one of 16 chunks (pigeonhole), so no entry with a close pair is missed, and the answer is the
linear scan's (the tests' setting; it is slow on a large bank).

Rows are added in runs: each addition is sorted on its own and merged with the run before it
while that one is less than twice its size, so there are about log2(rows) runs and each row
is merged about log2 times. Merging happens outside the readers' lock (runs are immutable
once made); only the swap of the run list takes it. Removal leaves a tombstone; the index is
rebuilt from its live rows when tombstones are the majority, beside the current one, which
searches go on using until the swap. One writer and many readers may
use an index at once: searches share a lock that the swaps take alone.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from worker.bank.fingerprint import HASH_BYTES, VideoFingerprint
from worker.bank.hamming import pairwise_distances, row_distances
from worker.bank.matching import BankMatch, HashRows, MatchRule, hash_rows, sort_matches, video_match

FAST_CHUNKS = (3,) * 10 + (2,)   # bytes per chunk
EXACT_CHUNKS = (2,) * 16


@dataclass(frozen=True)
class IndexStats:
    entries: int
    negative_entries: int
    rows: int
    tombstoned_rows: int
    runs: int = 0  # sorted runs a lookup searches (about log2 of the additions)


@dataclass(frozen=True)
class _Run:
    """Rows sorted by each chunk's value: ``keys[c]`` ascending, ``rows[c]`` their row numbers."""

    keys: tuple[np.ndarray, ...]
    rows: tuple[np.ndarray, ...]

    @property
    def size(self) -> int:
        return len(self.rows[0]) if self.rows else 0


class BankIndex:
    """Positive and negative bank entries, searchable by a query fingerprint."""

    def __init__(self, rule: MatchRule = MatchRule(), exact: bool = False,
                 chunks: Sequence[int] | None = None):
        chunks = tuple(chunks or (EXACT_CHUNKS if exact else FAST_CHUNKS))
        if sum(chunks) != HASH_BYTES or any(not 1 <= c <= 4 for c in chunks):
            raise ValueError(f"chunks are 1 to 4 bytes each and cover all {HASH_BYTES} bytes")
        self.rule = rule
        self._chunks = chunks
        self._starts = np.cumsum((0,) + chunks[:-1])
        # Pigeonhole: within max_distance, some chunk is off by max_distance // chunks bits at most.
        self._nflip = rule.max_distance // len(chunks) if exact else 0
        if self._nflip > 1:
            raise ValueError("exact probing covers at most one flipped bit a chunk: use more chunks")
        self._lock = _ReadWriteLock()
        self._writer = threading.Lock()
        self._runs: tuple[_Run, ...] = ()
        self._bits = _Growable((HASH_BYTES,), np.uint8)
        self._row_entry = _Growable((), np.int32)
        self._row_frame = _Growable((), np.int32)
        self._row_slot = _Growable((), np.int32)
        self._entry_ids: list[str] = []
        self._entry_first = _Growable((), np.int64)
        self._entry_slots = _Growable((), np.int32)
        self._entry_rows = _Growable((), np.int64)
        self._entry_negative = _Growable((), np.bool_)
        self._entry_alive = _Growable((), np.bool_)
        self._number_of: dict[str, int] = {}
        self._dead_rows = 0

    # --- writing ----------------------------------------------------------------------------

    def add(self, entry_id: str, fingerprint: VideoFingerprint, negative: bool = False) -> None:
        """Adds an entry, or replaces the entry with that id."""
        self.add_many([(entry_id, fingerprint)], negative)

    def add_many(self, entries: Iterable[tuple[str, VideoFingerprint | HashRows]],
                 negative: bool = False) -> None:
        """Adds entries as one run: for loading a bank. ``HashRows`` (already filtered by this
        index's rule) skip fingerprint parsing, for synthetic banks."""
        prepared = [(entry_id, rows if isinstance(rows, HashRows)
                     else hash_rows(rows, self.rule, mirrored=False))
                    for entry_id, rows in entries]
        if not prepared:
            return
        with self._writer:
            first = len(self._bits)
            bits = np.concatenate([rows.bits for _, rows in prepared]).reshape(-1, HASH_BYTES)
            # Rows first (readers only reach rows through the runs, swapped in below), then the
            # entries, under the lock, so that a search sees an entry with all of its rows.
            self._bits.extend(bits)
            self._row_entry.extend(np.concatenate([
                np.full(len(rows.bits), len(self._entry_ids) + i, np.int32)
                for i, (_, rows) in enumerate(prepared)]))
            self._row_frame.extend(np.concatenate([rows.frame for _, rows in prepared]).astype(np.int32))
            self._row_slot.extend(np.concatenate([rows.row_slots() for _, rows in prepared]).astype(np.int32))
            runs = self._merged(self._runs + (self._sorted_run(bits, first),)) if len(bits) else self._runs
            with self._lock.writing():
                at = first
                for entry_id, rows in prepared:
                    self._tombstone(entry_id)
                    number = len(self._entry_ids)
                    self._entry_ids.append(entry_id)
                    self._number_of[entry_id] = number
                    self._entry_first.append(at)
                    self._entry_slots.append(rows.slots)
                    self._entry_rows.append(len(rows.bits))
                    self._entry_negative.append(negative)
                    self._entry_alive.append(rows.frame_count > 0)
                    at += len(rows.bits)
                self._runs = runs

    def remove(self, entry_id: str) -> bool:
        """Removes an entry; False if there was none."""
        with self._writer:
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
                              rows=sum(run.size for run in self._runs), tombstoned_rows=self._dead_rows,
                              runs=len(self._runs))

    # --- searching ----------------------------------------------------------------------------

    def search(self, query: VideoFingerprint) -> list[BankMatch]:
        """Every entry the query matches by the rule: positive ones first, then negative."""
        return self.search_rows(hash_rows(query, self.rule, mirrored=True))

    def search_rows(self, q: HashRows) -> list[BankMatch]:
        """:meth:`search` for a query already reduced to its usable hashes (mirrored too)."""
        if q.frame_count == 0 or len(q.bits) == 0:
            return []
        with self._lock.reading():
            shortlist = self._shortlist(q)
            if len(shortlist) == 0:
                return []
            negative = self._entry_negative.view()[shortlist]
            # Negative entries first: their matched query frames are known-good for the rest.
            known_good = np.zeros(q.frame_count, dtype=bool)
            found = []
            for number, is_negative in sorted(zip(shortlist.tolist(), negative.tolist()),
                                              key=lambda item: not item[1]):
                match, query_frames = self._verify(q, number, None if is_negative else known_good)
                if is_negative:
                    known_good[query_frames] = True
                if match.is_match:
                    found.append(BankMatch.of(self._entry_ids[number], is_negative, match))
        return sort_matches(found)

    def _shortlist(self, q: HashRows) -> np.ndarray:
        """Alive entries with at least one row within the match distance of a query hash."""
        probes, owner = self._probe_keys(q.bits)
        rows, queries = [], []
        for run in self._runs:
            for c in range(len(self._chunks)):
                lo = np.searchsorted(run.keys[c], probes[c], side="left")
                hi = np.searchsorted(run.keys[c], probes[c], side="right")
                hit = hi > lo
                if hit.any():
                    rows.append(_ranges(run.rows[c], lo[hit], hi[hit]))
                    queries.append(np.repeat(owner[c][hit], (hi - lo)[hit]))
        if not rows:
            return np.zeros(0, np.int64)
        # a (row, query hash) pair may be found through several chunks: once each
        pairs = np.unique(np.concatenate(rows).astype(np.int64) * len(q.bits) + np.concatenate(queries))
        candidate, query_row = pairs // len(q.bits), pairs % len(q.bits)
        bits = self._bits.view()
        close = row_distances(q.bits[query_row], bits[candidate]) <= self.rule.max_distance
        entries = np.unique(self._row_entry.view()[candidate[close]])
        return entries[self._entry_alive.view()[entries]]

    def _probe_keys(self, bits: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per chunk: the values to look up, and the query row each belongs to (with exact
        probing, each value and its one-bit changes)."""
        keys = _chunk_keys(bits, self._chunks, self._starts)
        rows = np.arange(len(bits))
        probes, owner = [], []
        for c, width in enumerate(self._chunks):
            values, of = [keys[c]], [rows]
            if self._nflip:
                for bit in range(8 * width):
                    values.append(keys[c] ^ np.uint32(1 << bit))
                    of.append(rows)
            values, of = np.concatenate(values), np.concatenate(of)
            order = np.argsort(values, kind="stable")  # sorted needles: searchsorted walks forward
            probes.append(values[order])
            owner.append(of[order])
        return probes, owner

    def _verify(self, q: HashRows, number: int, known_good: np.ndarray | None):
        """The video rule between the query and one entry, from all of their rows."""
        first = int(self._entry_first.view()[number])
        last = first + int(self._entry_rows.view()[number])
        distances = pairwise_distances(q.bits, self._bits.view()[first:last])
        qi, ei = np.nonzero(distances <= self.rule.max_distance)
        query_frame = q.frame[qi]
        match = video_match(query_frame, self._row_frame.view()[first + ei], distances[qi, ei],
                            q.frame_count, int(self._entry_slots.view()[number]), self.rule,
                            known_good, self._row_slot.view()[first + ei])
        return match, query_frame

    # --- internals ------------------------------------------------------------------------------

    def _sorted_run(self, bits: np.ndarray, first: int) -> _Run:
        keys = _chunk_keys(bits, self._chunks, self._starts)
        order = [np.argsort(k, kind="stable") for k in keys]
        return _Run(tuple(k[o] for k, o in zip(keys, order)),
                    tuple((o + first).astype(np.int32) for o in order))

    def _merged(self, runs: tuple[_Run, ...]) -> tuple[_Run, ...]:
        """Merges the newest run into the one before while that one is under twice its size."""
        runs = list(runs)
        while len(runs) > 1 and runs[-2].size < 2 * runs[-1].size:
            older, newer = runs[-2], runs.pop()
            keys, rows = [], []
            for c in range(len(self._chunks)):
                k = np.concatenate([older.keys[c], newer.keys[c]])
                order = np.argsort(k, kind="stable")  # two sorted runs: timsort merges them
                keys.append(k[order])
                rows.append(np.concatenate([older.rows[c], newer.rows[c]])[order])
            runs[-1] = _Run(tuple(keys), tuple(rows))
        return tuple(runs)

    def _tombstone(self, entry_id: str) -> bool:
        number = self._number_of.pop(entry_id, None)
        if number is None:
            return False
        if self._entry_alive.view()[number]:
            self._entry_alive.view()[number] = False
            self._dead_rows += int(self._entry_rows.view()[number])
        return True

    def _rebuild(self) -> None:
        """The index again from its live rows only (called with the writer's lock held: only
        the writer changes what it reads). It is built beside the current one, which searches
        go on using, and swapped in under the readers' lock."""
        live = self._entry_alive.view()[self._row_entry.view()]
        bits = self._bits.view()[live]
        row_entry = self._row_entry.view()[live]
        # Rows keep their order, so each entry's rows stay together: renumber its first row.
        first_row = np.full(len(self._entry_ids), -1, np.int64)
        starts = np.r_[True, row_entry[1:] != row_entry[:-1]] if len(row_entry) else np.zeros(0, bool)
        first_row[row_entry[starts]] = np.flatnonzero(starts)
        rebuilt = {}
        for name, values in (("_bits", bits), ("_row_entry", row_entry),
                             ("_row_frame", self._row_frame.view()[live]),
                             ("_row_slot", self._row_slot.view()[live])):
            rebuilt[name] = _Growable(values.shape[1:], values.dtype)
            rebuilt[name].extend(values)
        runs = (self._sorted_run(bits, 0),) if len(bits) else ()
        with self._lock.writing():
            for name, growable in rebuilt.items():
                setattr(self, name, growable)
            self._entry_first.view()[:] = first_row
            self._dead_rows = 0
            self._runs = runs


def _chunk_keys(bits: np.ndarray, chunks: Sequence[int], starts: np.ndarray) -> list[np.ndarray]:
    """Each chunk of each row as an unsigned integer (big-endian bytes)."""
    out = []
    for start, width in zip(starts, chunks):
        key = np.zeros(len(bits), np.uint32)
        for b in range(start, start + width):
            key = (key << np.uint32(8)) | bits[:, b].astype(np.uint32)
        out.append(key)
    return out


def _ranges(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """values[lo[0]:hi[0]], values[lo[1]:hi[1]], ... concatenated, without a Python loop."""
    lengths = hi - lo
    offsets = np.repeat(lo - np.cumsum(np.r_[0, lengths[:-1]]), lengths)
    return values[offsets + np.arange(lengths.sum())]


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
