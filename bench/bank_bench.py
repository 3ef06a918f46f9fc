"""Bank index at scale: synthetic banks of random PDQ hashes with planted near-duplicates.

Each entry has ``--rows`` hashes (one per frame, as an imported plain vPDQ entry; our own
entries carry about 4.4 unmirrored hashes a frame). A query is a planted entry with every
hash moved 0..31 bits, plus the extra hashes a robust query carries (``--query-extra`` per
frame, random): by default 7 (the mirror, three centre crops and their mirrors) as the
baseline and 19 (those and the twelve one-sided un-crop guesses), on the same bank. Reported: memory, build time, lookup p50/p99, and recall against the
linear oracle (run on the planted entry plus a subsample of the bank: its first 2,000 entries).

    PYTHONPATH=. .venv/bin/python bench/bank_bench.py --entries 1000 100000 1000000 [--exact]

Memory is the growth of the process's resident set, so run one size per process for clean
figures.
"""
from __future__ import annotations

import argparse
import gc
import time

import numpy as np

from worker.bank.index import BankIndex
from worker.bank.matching import HashRows, MatchRule, close_pairs, video_match

RULE = MatchRule()


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def entry_rows(rng, rows: int) -> HashRows:
    return HashRows(rng.integers(0, 256, (rows, 32), dtype=np.uint8),
                    np.arange(rows, dtype=np.int32), rows)


def near(bits: np.ndarray, rng) -> np.ndarray:
    """Each row with 0..31 random bits flipped."""
    unpacked = np.unpackbits(bits, axis=1)
    for row in unpacked:
        row[rng.choice(256, int(rng.integers(0, 32)), replace=False)] ^= 1
    return np.packbits(unpacked, axis=1)


def query_rows(planted: HashRows, extra: int, rng) -> HashRows:
    frames = planted.frame_count
    bits = [near(planted.bits, rng)]
    bits += [rng.integers(0, 256, (frames, 32), dtype=np.uint8) for _ in range(extra)]
    frame = np.tile(np.arange(frames, dtype=np.int32), extra + 1)
    return HashRows(np.concatenate(bits), frame, frames)


def oracle(query: HashRows, entries: dict[str, HashRows]) -> set[str]:
    found = set()
    for entry_id, rows in entries.items():
        if video_match(*close_pairs(query, rows, RULE.max_distance), query.frame_count,
                       rows.frame_count, RULE).is_match:
            found.add(entry_id)
    return found


def run(entries: int, rows: int, queries: int, extras: list[int], exact: bool,
        oracle_sample: int, seed: int = 0) -> list[dict]:
    """One bank, then the lookups for each query shape in ``extras`` (extra hashes a frame)."""
    rng = np.random.default_rng(seed)
    gc.collect()
    before = rss_mib()
    index = BankIndex(RULE, exact=exact)
    bank: dict[str, HashRows] = {}
    started = time.perf_counter()
    batch = []
    for i in range(entries):
        rows_i = entry_rows(rng, rows)
        if i < oracle_sample or i % max(1, entries // queries) == 0:
            bank[f"e{i}"] = rows_i
        batch.append((f"e{i}", rows_i))
        if len(batch) == 10000:
            index.add_many(batch)
            batch = []
    index.add_many(batch)
    build_s = time.perf_counter() - started
    memory = rss_mib() - before
    planted_ids = [f"e{i}" for i in range(0, entries, max(1, entries // queries))][:queries]
    sample = {k: bank[k] for k in list(bank)[:oracle_sample]}
    results = []
    for extra in extras:
        latencies, hits, agree = [], 0, 0
        for planted in planted_ids:
            query = query_rows(bank[planted], extra, rng)
            started = time.perf_counter()
            found = {m.entry_id for m in index.search_rows(query)}
            latencies.append(time.perf_counter() - started)
            hits += planted in found
            subset = dict(sample, **{planted: bank[planted]})
            agree += (found & set(subset)) == oracle(query, subset)
        p50 = 1e3 * float(np.percentile(latencies, 50))
        results.append(dict(entries=entries, rows=entries * rows, query_extra=extra, exact=exact,
                            build_s=build_s, memory_mib=memory, p50_ms=p50,
                            p99_ms=1e3 * float(np.percentile(latencies, 99)),
                            p50_vs_first=p50 / results[0]["p50_ms"] if results else 1.0,
                            recall=hits / len(planted_ids),
                            oracle_agreement=agree / len(planted_ids)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, nargs="+", default=[1000, 100000])
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--query-extra", type=int, nargs="+", default=[7, 19],
                        help="query shapes, as extra hashes per query frame, measured on the same "
                             "bank; the first is the baseline of the p50 ratio. 7: the mirror, 3 "
                             "centre crops and their mirrors; 19: those and the 12 one-sided "
                             "un-crop guesses (+2 with a trim)")
    parser.add_argument("--oracle-sample", type=int, default=2000)
    parser.add_argument("--exact", action="store_true",
                        help="BankIndex(exact=True): also probe one-bit changes of each chunk")
    args = parser.parse_args()
    for entries in args.entries:
        for result in run(entries, args.rows, args.queries, args.query_extra, args.exact,
                           min(args.oracle_sample, entries)):
            print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in result.items()), flush=True)


if __name__ == "__main__":
    main()
