"""The video match rule, as vPDQ defines it, and the linear scan that serves as its oracle.

For the reference rule, frames are a bag of hashes (order plays no part). Frames whose hashes are all
below ``min_quality`` are dropped, and repeated frames (the same plain hash) count once. Two
frames match when any hash of the query frame (mirrored ones included) is within
``max_distance`` bits of any unmirrored hash of the bank frame: mirrors are taken on one
side only, since a mirrored query against an unmirrored entry is the same comparison as the
other way round. A video matches an entry when the share of the entry's frames that are
matched, and the share of the query's frames that are matched, reach their thresholds.

That reference rule (vPDQ's defaults: 80% of the entry, 0% of the query) cannot catch a
clip: the middle half of a video holds only half of its frames. A second rule, the clip
rule, judges a query by its own frames instead: it matches when at least
``clip_query_threshold_pct`` of the query's frames, and at least ``clip_min_frames`` of
them, match entry frames *in the same order* (the longest chain of matched pairs whose
query and entry frames both move forward in time). Order is what sets a clip of a video
apart from a few frames that happen to look alike (a black card, a logo): an unrelated
video that matched a few frames here and there, out of order, is not a clip. The minimum
count keeps a one- or two-frame query from matching on a single frame. Both shares are
reported whichever rule matched, and ``VideoMatch.rule`` says which one did.

An entry may hold more than one frame a second: where its picture changes fast (a pan, a
cut), :func:`worker.bank.fingerprint.thin_dense` keeps extra frames so that an upload's
frames, sampled at whatever phase a trim left them, still land near one of them. The
entry's share is therefore counted in time slots of ``entry_slot_s`` (one second, the rate
uploads are hashed at), not in frames: a slot is matched when any of its frames is. An entry
with one frame a second has one frame a slot, so for it nothing changes. The clip rule's
chain moves forward in the query and never backward in the entry: a short upload is hashed
at more than one frame a second (``bank.min_hash_frames``), so several of its frames may
meet one entry frame where the entry's picture stood still.

Negative banks hold known-good content. A query frame that matches any negative-bank frame
is known-good: it is taken out of the query before it is compared with the positive bank,
so known-good frames (a common intro, a logo card) never count as evidence. Negative
entries that match by the video rule are reported too, flagged, for the audit trail.

Pure numpy: the index in :mod:`worker.bank.index` finds candidates faster and then
applies :func:`video_match`, the same function, to them.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from worker.bank.fingerprint import HASH_BYTES, VideoFingerprint, query_side_only
from worker.bank.hamming import pairwise_distances

@dataclass(frozen=True)
class MatchRule:
    """vPDQ's defaults: distance 31, quality 50, 80% of the entry's frames, 0% of the query's."""

    max_distance: int = 31
    min_quality: int = 50
    entry_threshold_pct: float = 80.0
    query_threshold_pct: float = 0.0
    # The clip rule (see the module docstring); clip_min_frames = 0 turns it off.
    clip_query_threshold_pct: float = 70.0
    clip_min_frames: int = 3
    entry_slot_s: float = 1.0    # an entry's share is counted in slots this long

    def __post_init__(self):
        if self.clip_min_frames < 0:
            raise ValueError("clip_min_frames must not be negative (0: no clip rule)")
        if not 0 <= self.clip_query_threshold_pct <= 100:
            raise ValueError("clip_query_threshold_pct is a percentage, 0..100")
        if not self.entry_slot_s > 0:
            raise ValueError("entry_slot_s must be positive")
        if not 0 <= self.max_distance < 8 * HASH_BYTES:
            raise ValueError("max_distance must be within 0..255")
        if not 0 <= self.min_quality <= 100:
            raise ValueError("min_quality must be within 0..100")
        if not (0 <= self.entry_threshold_pct <= 100 and 0 <= self.query_threshold_pct <= 100):
            raise ValueError("thresholds are percentages, 0..100")


@dataclass(frozen=True)
class HashRows:
    """The hashes of a fingerprint that take part in matching, one row each.

    ``frame`` is the row's frame position among the fingerprint's usable frames, of which
    there are ``frame_count``. ``slot`` gives each frame position its time slot (see the
    module docstring), of which there are ``slot_count``; None: one slot a frame.
    """

    bits: np.ndarray
    frame: np.ndarray
    frame_count: int
    slot: np.ndarray | None = None
    slot_count: int | None = None

    @property
    def slots(self) -> int:
        return self.frame_count if self.slot_count is None else self.slot_count

    def row_slots(self) -> np.ndarray:
        """Each row's slot."""
        return self.frame if self.slot is None else self.slot[self.frame]


@dataclass(frozen=True)
class VideoMatch:
    """How a query compares with one entry. ``median_distance``: over the matched query
    frames, each at its closest entry frame; None when no frame matched."""

    is_match: bool
    query_matched_pct: float
    entry_matched_pct: float
    median_distance: float | None
    query_frames: int
    entry_frames: int             # the entry's time slots (one a frame at one frame a second)
    matched_query_frames: int
    matched_entry_frames: int     # slots
    in_order_frames: int = 0     # matched frames in the same order (worked out for the clip rule)
    rule: str | None = None      # which rule matched: "entry" (the reference) or "clip"


ENTRY_RULE = "entry"
CLIP_RULE = "clip"


@dataclass(frozen=True)
class BankMatch:
    """A bank entry that the query matches; ``negative``: the entry is known-good content."""

    entry_id: str
    negative: bool
    query_matched_pct: float
    entry_matched_pct: float
    median_distance: float
    query_frames: int
    entry_frames: int
    rule: str = ENTRY_RULE

    @classmethod
    def of(cls, entry_id: str, negative: bool, match: VideoMatch) -> BankMatch:
        return cls(entry_id, negative, match.query_matched_pct, match.entry_matched_pct,
                   float(match.median_distance), match.query_frames, match.entry_frames,
                   match.rule or ENTRY_RULE)


def hash_rows(fingerprint: VideoFingerprint, rule: MatchRule, *, mirrored: bool) -> HashRows:
    """Rows of the usable hashes; ``mirrored``: include mirrored hashes (the query side)."""
    seen: set[bytes] = set()
    bits: list[bytes] = []
    frames: list[int] = []
    times: list[float] = []
    count = 0
    for frame in fingerprint.frames:
        if frame.plain.hash in seen:
            continue
        seen.add(frame.plain.hash)
        usable = [h for h in frame.hashes if h.quality >= rule.min_quality]
        if not any(not h.mirrored for h in usable):
            continue
        for h in usable:
            if not mirrored and query_side_only(h.kind):
                continue  # the bank side: see query_side_only
            if mirrored or not h.mirrored:
                bits.append(h.hash)
                frames.append(count)
        times.append(frame.timestamp_s)
        count += 1
    array = np.frombuffer(b"".join(bits), dtype=np.uint8).reshape(-1, HASH_BYTES)
    slot, slot_count = time_slots(times, rule.entry_slot_s)
    return HashRows(array, np.asarray(frames, dtype=np.int32), count, slot, slot_count)


def time_slots(timestamps_s, slot_s: float) -> tuple[np.ndarray, int]:
    """Each frame's slot (numbered 0.., in time order) and how many slots hold a frame.

    Slots are ``slot_s`` long and centred on the first frame's time plus whole steps, so the
    frames of a one-a-second grid fall one to a slot whatever the grid's phase.
    """
    times = np.asarray(timestamps_s, dtype=np.float64)
    if len(times) == 0:
        return np.zeros(0, np.int32), 0
    raw = np.floor((times - times.min()) / slot_s + 0.5).astype(np.int64)
    used, slot = np.unique(raw, return_inverse=True)
    return slot.astype(np.int32).reshape(-1), len(used)


def close_pairs(query: HashRows, entry: HashRows, max_distance: int):
    """(query frame, entry frame, distance) of every hash pair within ``max_distance``."""
    distances = pairwise_distances(query.bits, entry.bits)
    q, e = np.nonzero(distances <= max_distance)
    return query.frame[q], entry.frame[e], distances[q, e]


def video_match(query_frame: np.ndarray, entry_frame: np.ndarray, distance: np.ndarray,
                query_frames: int, entry_frames: int, rule: MatchRule,
                known_good: np.ndarray | None = None,
                entry_slot: np.ndarray | None = None) -> VideoMatch:
    """The video rule, from the close hash pairs between a query and an entry.

    ``entry_frames`` is the entry's slot count, and ``entry_slot`` each pair's entry slot
    (None: one slot a frame). ``known_good`` marks query frames (by position) that matched
    the negative bank: they are left out of the query, from its frame count as much as from
    its matches.
    """
    keep = distance <= rule.max_distance
    counted = query_frames
    if known_good is not None:
        keep &= ~known_good[query_frame]
        counted -= int(known_good.sum())
    slots = entry_frame if entry_slot is None else entry_slot
    query_frame, entry_frame, distance, slots = query_frame[keep], entry_frame[keep], distance[keep], slots[keep]
    if counted <= 0 or entry_frames <= 0:
        return VideoMatch(False, 0.0, 0.0, None, counted, entry_frames, 0, 0)
    best = np.full(query_frames, np.iinfo(np.int32).max, dtype=np.int32)
    np.minimum.at(best, query_frame, distance.astype(np.int32))
    matched = best <= rule.max_distance
    matched_query, matched_entry = int(matched.sum()), len(np.unique(slots))
    query_pct = 100.0 * matched_query / counted
    entry_pct = 100.0 * matched_entry / entry_frames
    which, in_order = None, 0
    if matched_query > 0 and entry_pct >= rule.entry_threshold_pct and query_pct >= rule.query_threshold_pct:
        which = ENTRY_RULE
    elif (rule.clip_min_frames and matched_query >= rule.clip_min_frames
          and query_pct >= rule.clip_query_threshold_pct):
        # The chain is only worked out where it can decide: it is never longer than the
        # number of matched query frames.
        in_order = longest_chain(query_frame, entry_frame)
        if in_order >= rule.clip_min_frames and 100.0 * in_order / counted >= rule.clip_query_threshold_pct:
            which = CLIP_RULE
    return VideoMatch(
        is_match=which is not None,
        query_matched_pct=query_pct, entry_matched_pct=entry_pct,
        median_distance=float(np.median(best[matched])) if matched_query else None,
        query_frames=counted, entry_frames=entry_frames,
        matched_query_frames=matched_query, matched_entry_frames=matched_entry,
        in_order_frames=in_order, rule=which,
    )


def longest_chain(query_frame: np.ndarray, entry_frame: np.ndarray) -> int:
    """The most matched pairs that can be taken with query frames strictly increasing and
    entry frames never decreasing: how many query frames match the entry in the same order.

    Pairs sorted by query frame, and by entry frame downwards within a query frame, make this
    the longest non-decreasing run of entry frames (patience sorting, n log n); the downward
    order within a query frame keeps two pairs of one query frame out of a chain.
    """
    if len(query_frame) == 0:
        return 0
    pairs = np.unique(np.stack([np.asarray(query_frame, np.int64),
                                -np.asarray(entry_frame, np.int64)], axis=1), axis=0)
    tails: list[int] = []
    for entry in (-pairs[:, 1]).tolist():
        at = bisect.bisect_right(tails, entry)
        if at == len(tails):
            tails.append(entry)
        else:
            tails[at] = entry
    return len(tails)


def compare(query: VideoFingerprint, entry: VideoFingerprint,
            rule: MatchRule = MatchRule()) -> VideoMatch:
    """One query against one entry, by brute force."""
    q = hash_rows(query, rule, mirrored=True)
    e = hash_rows(entry, rule, mirrored=False)
    return entry_match(q, e, rule)


def entry_match(q: HashRows, e: HashRows, rule: MatchRule,
                known_good: np.ndarray | None = None) -> VideoMatch:
    """The video rule between a query's rows and an entry's, by brute force."""
    query_frame, entry_frame, distance = close_pairs(q, e, rule.max_distance)
    return video_match(query_frame, entry_frame, distance, q.frame_count, e.slots, rule,
                       known_good, None if e.slot is None else e.slot[entry_frame])


def linear_search(query: VideoFingerprint, positives: Mapping[str, VideoFingerprint],
                  negatives: Mapping[str, VideoFingerprint] | None = None,
                  rule: MatchRule = MatchRule()) -> list[BankMatch]:
    """Every entry the query matches, by comparing it with each one: the test oracle."""
    q = hash_rows(query, rule, mirrored=True)
    known_good = np.zeros(q.frame_count, dtype=bool)
    found = []
    for entry_id, fingerprint in (negatives or {}).items():
        e = hash_rows(fingerprint, rule, mirrored=False)
        known_good[close_pairs(q, e, rule.max_distance)[0]] = True
        match = entry_match(q, e, rule)
        if match.is_match:
            found.append(BankMatch.of(entry_id, True, match))
    for entry_id, fingerprint in positives.items():
        match = entry_match(q, hash_rows(fingerprint, rule, mirrored=False), rule, known_good)
        if match.is_match:
            found.append(BankMatch.of(entry_id, False, match))
    return sort_matches(found)


def sort_matches(matches: list[BankMatch]) -> list[BankMatch]:
    """Positive before negative, then the best-covered entry first; ties by id."""
    return sorted(matches, key=lambda m: (m.negative, -m.entry_matched_pct,
                                          -m.query_matched_pct, m.entry_id))
