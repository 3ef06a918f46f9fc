"""Why a trimmed clip of a fast pan (bikes.mp4) misses its bank entry, and what entry
density would catch it (docs/hash-bank.md, "Trimmed clips and dense entries").

Prints, for each sample video's middle half (re-encoded as tests/integration/
test_bank_variants.py writes it: libx264, ultrafast, crf 23):

1. the robust distance (query-side hashes against the entry's bank-side hashes, as the
   matcher compares them) between each clip frame and the original frame ``offset`` frames
   away, 0..12: whether the edit (re-encode) or the time offset of the sampled frames is what
   breaks the match;
2. the clip as the worker queries it (the decoder's hash frames at 1 a second) against an
   entry hashed from the decoder's hash frames at 4..30 a second (bank-side hashes only,
   every hash frame): whether it matches, the entry's rows, and hashing time a frame.

Clips are written under ``--cache`` (never committed).

    PYTHONPATH=. python tools/bank_trim_density.py --cache /tmp/bank-trim
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch  # noqa: F401  before decord (docs/runtime.md, "Pitfalls")
import numpy as np

from worker.bank.fingerprint import HashingConfig, fingerprint_frames, hash_frame, query_side_only
from worker.bank.hamming import pairwise_distances
from worker.bank.matching import MatchRule, compare, hash_rows
from worker.media.decoding import DecordSampler
from worker.testing.samples import sample_video

# The clips are made, and read back, exactly as the variant test makes them.
from tests.integration.test_bank_variants import build_variant, decode_all

VIDEOS = ("carphone_pristine.mp4", "bikes.mp4", "bigbuckbunny.mp4")
ENTRY_RATES = (4.0, 8.0, 12.5, 25.0, 30.0)


def rows(hashes, query: bool) -> np.ndarray:
    """The rows the matcher compares: all usable hashes of a query frame, the unmirrored
    bank-side ones of an entry frame."""
    kept = [h for h in hashes if h.quality >= MatchRule().min_quality
            and (query or (not h.mirrored and not query_side_only(h.kind)))]
    return np.frombuffer(b"".join(h.hash for h in kept), np.uint8).reshape(-1, 32)


def offsets(name: str, frames: list[np.ndarray], clip: list[np.ndarray]) -> None:
    quarter = len(frames) // 4
    entry = [rows(hash_frame(f), False) for f in frames]
    query = [rows(hash_frame(f), True) for f in clip]
    for offset in range(13):
        dist = np.array([int(pairwise_distances(query[i], entry[quarter + i + offset]).min())
                         for i in range(len(clip)) if quarter + i + offset < len(frames)])
        print(f"{name} offset {offset:2d} frames: median {np.median(dist):.0f} bits, "
              f"p90 {np.percentile(dist, 90):.0f}, within 31: {np.mean(dist <= 31) * 100:.0f}%")


def densities(name: str, clip_path: Path) -> None:
    clip = DecordSampler(hash_rate_hz=1.0, hash_max_frames=300).sample(clip_path, 32)
    query = fingerprint_frames(clip.hash_frames, clip.hash_timestamps_s, clip.hash_indices)
    bank_side = HashingConfig(seconds_per_hash=0, side_crops=())
    for rate in ENTRY_RATES:
        source = DecordSampler(hash_rate_hz=rate, hash_max_frames=300).sample(sample_video(name), 32)
        start = time.perf_counter()
        entry = fingerprint_frames(source.hash_frames, source.hash_timestamps_s,
                                   source.hash_indices, bank_side).bank_side()
        per_frame = (time.perf_counter() - start) / len(source.hash_indices)
        match = compare(query, entry)
        print(f"{name} clip ({match.query_frames} frames at 1/s) vs entry at {rate:g}/s "
              f"({len(source.hash_indices)} frames, "
              f"{len(hash_rows(entry, MatchRule(), mirrored=False).bits)} rows, "
              f"{per_frame * 1000:.1f} ms a frame): match {match.is_match} ({match.rule}), "
              f"{match.query_matched_pct:.0f}% of the clip's frames")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bank-trim"))
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    for name in VIDEOS:
        source = sample_video(name)
        frames, rate = decode_all(source)
        clip_path = build_variant(source, frames, rate, "trim", args.cache)  # as the test makes it
        clip, _ = decode_all(clip_path)
        offsets(name, frames, clip)
        densities(name, clip_path)


if __name__ == "__main__":
    main()
