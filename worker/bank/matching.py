"""The video match rule, as vPDQ defines it, and the linear scan that serves as its oracle.

Frames are a bag of hashes (order and timestamps play no part). Frames whose hashes are all
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

Negative banks hold known-good content. A query frame that matches any negative-bank frame
is known-good: it is taken out of the query before it is compared with the positive bank,
so known-good frames (a common intro, a logo card) never count as evidence. Negative
entries that match by the video rule are reported too, flagged, for the audit trail.

Pure numpy: the FAISS index in :mod:`worker.bank.index` finds candidates faster and then
applies :func:`video_match`, the same function, to them.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .fingerprint import HASH_BYTES, VideoFingerprint, query_side_only

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


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

    def __post_init__(self):
        if self.clip_min_frames < 0:
            raise ValueError("clip_min_frames must not be negative (0: no clip rule)")
        if not 0 <= self.clip_query_threshold_pct <= 100:
            raise ValueError("clip_query_threshold_pct is a percentage, 0..100")
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
    there are ``frame_count``.
    """

    bits: np.ndarray
    frame: np.ndarray
    frame_count: int


@dataclass(frozen=True)
class VideoMatch:
    """How a query compares with one entry. ``median_distance``: over the matched query
    frames, each at its closest entry frame; None when no frame matched."""

    is_match: bool
    query_matched_pct: float
    entry_matched_pct: float
    median_distance: float | None
    query_frames: int
    entry_frames: int
    matched_query_frames: int
    matched_entry_frames: int
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
        count += 1
    array = np.frombuffer(b"".join(bits), dtype=np.uint8).reshape(-1, HASH_BYTES)
    return HashRows(array, np.asarray(frames, dtype=np.int32), count)


def hamming(a: bytes, b: bytes) -> int:
    return int(_POPCOUNT[np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)].sum())


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between rows of ``a`` (n, 32) and rows of ``b`` (m, 32): (n, m)."""
    return _POPCOUNT[a[:, None, :] ^ b[None, :, :]].sum(axis=2, dtype=np.int32)


def close_pairs(query: HashRows, entry: HashRows, max_distance: int):
    """(query frame, entry frame, distance) of every hash pair within ``max_distance``."""
    distances = pairwise_distances(query.bits, entry.bits)
    q, e = np.nonzero(distances <= max_distance)
    return query.frame[q], entry.frame[e], distances[q, e]


def video_match(query_frame: np.ndarray, entry_frame: np.ndarray, distance: np.ndarray,
                query_frames: int, entry_frames: int, rule: MatchRule,
                known_good: np.ndarray | None = None) -> VideoMatch:
    """The video rule, from the close hash pairs between a query and an entry.

    ``known_good`` marks query frames (by position) that matched the negative bank: they
    are left out of the query, from its frame count as much as from its matches.
    """
    keep = distance <= rule.max_distance
    counted = query_frames
    if known_good is not None:
        keep &= ~known_good[query_frame]
        counted -= int(known_good.sum())
    query_frame, entry_frame, distance = query_frame[keep], entry_frame[keep], distance[keep]
    if counted <= 0 or entry_frames <= 0:
        return VideoMatch(False, 0.0, 0.0, None, counted, entry_frames, 0, 0)
    best = np.full(query_frames, np.iinfo(np.int32).max, dtype=np.int32)
    np.minimum.at(best, query_frame, distance.astype(np.int32))
    matched = best <= rule.max_distance
    matched_query, matched_entry = int(matched.sum()), len(np.unique(entry_frame))
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
    """The most matched pairs that can be taken with query and entry frames both strictly
    increasing: how many query frames match the entry in the same order.

    Pairs sorted by query frame, and by entry frame downwards within a query frame, make this
    the longest strictly increasing run of entry frames (patience sorting, n log n); the
    downward order within a query frame keeps two pairs of one query frame out of a chain.
    """
    if len(query_frame) == 0:
        return 0
    pairs = np.unique(np.stack([np.asarray(query_frame, np.int64),
                                -np.asarray(entry_frame, np.int64)], axis=1), axis=0)
    tails: list[int] = []
    for entry in (-pairs[:, 1]).tolist():
        at = bisect.bisect_left(tails, entry)
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
    return video_match(*close_pairs(q, e, rule.max_distance), q.frame_count, e.frame_count, rule)


def linear_search(query: VideoFingerprint, positives: Mapping[str, VideoFingerprint],
                  negatives: Mapping[str, VideoFingerprint] | None = None,
                  rule: MatchRule = MatchRule()) -> list[BankMatch]:
    """Every entry the query matches, by comparing it with each one: the test oracle."""
    q = hash_rows(query, rule, mirrored=True)
    known_good = np.zeros(q.frame_count, dtype=bool)
    found = []
    for entry_id, fingerprint in (negatives or {}).items():
        e = hash_rows(fingerprint, rule, mirrored=False)
        pairs = close_pairs(q, e, rule.max_distance)
        known_good[pairs[0]] = True
        match = video_match(*pairs, q.frame_count, e.frame_count, rule)
        if match.is_match:
            found.append(BankMatch.of(entry_id, True, match))
    for entry_id, fingerprint in positives.items():
        e = hash_rows(fingerprint, rule, mirrored=False)
        match = video_match(*close_pairs(q, e, rule.max_distance), q.frame_count,
                            e.frame_count, rule, known_good)
        if match.is_match:
            found.append(BankMatch.of(entry_id, False, match))
    return sort_matches(found)


def sort_matches(matches: list[BankMatch]) -> list[BankMatch]:
    """Positive before negative, then the best-covered entry first; ties by id."""
    return sorted(matches, key=lambda m: (m.negative, -m.entry_matched_pct,
                                          -m.query_matched_pct, m.entry_id))
