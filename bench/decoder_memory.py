"""What one sandboxed decoder child holds: the worker's child against the decoder it replaced.

    .venv/bin/python bench/decoder_memory.py [--repeat 5] [--frames 32]

For each clip (the benchmark's 720p and 1080p clips, 10 s and 60 s, a keyframe every 2 s),
``--repeat`` times, a fresh decoder child of each side decodes the worker's sample (the
default ``--frames``, hash frames and frame choice) twice and hands it to this process over
a pipe; the child's peak resident memory over both (``VmHWM``), its address space
(``VmSize``) and the second decode's time (a reused child's) are read from ``/proc`` and the
clock. The two sides alternate, so both see the same
machine.

- **worker**: ``worker.media.sandbox`` as the worker starts it (``worker.app.build_sampler``).
- **baseline**: the decoder as it was before 4 December 2026, run by this script as its own
  child: decord imported the ordinary way (it preloads every ``nvidia-*`` CUDA library it
  finds), the same frames 32 a ``get_batch`` call, the whole sample held, then written out.

Prints the medians and the worst of each side, and their ratio. The figures are in
docs/benchmarks.md, "The decoder child's memory". Linux only (``/proc``).
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MIB = 1 << 20


def status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmSize", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def baseline_child() -> None:
    """The decoder as it was: ordinary import, the same frames (sampled and hash frames, in
    one pass) 32 a call, the sample held whole, then written out."""
    import decord  # noqa: the ordinary import, CUDA libraries preloaded
    import numpy as np

    from worker.media.decoding import DecordSampler, _shrink
    from worker.media.limits import DecodeLimits
    from worker.media.sampling import choose_frames

    planner = DecordSampler(DecodeLimits.from_json(json.loads(sys.argv[2])))
    limits = planner.limits
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        request = json.loads(line)
        reader = decord.VideoReader(request["path"], ctx=decord.cpu(0), num_threads=limits.threads)
        n = len(reader)
        hashed = planner._hash_indices(n, float(reader.get_frame_timestamp([n - 1])[0, 1]))
        keys = [int(i) for i in reader.get_key_indices()]
        indices = choose_frames(n, request["count"], limits.frame_slack, [*keys, *hashed])
        wanted = sorted(set(indices) | set(hashed))
        where = {index: i for i, index in enumerate(indices)}
        frames, small = None, []
        for chunk in [wanted[:1]] + [wanted[start:start + 32] for start in range(1, len(wanted), 32)]:
            raw = reader.get_batch(chunk).asnumpy()
            if frames is None:
                frames = np.empty((len(indices), *raw.shape[1:]), np.uint8)
            for index, frame in zip(chunk, raw):
                if index in where:
                    frames[where[index]] = frame
                if index in hashed:
                    small.append(_shrink(frame, limits.hash_max_side))
        del reader, raw
        hashes = np.stack(small)
        out.write(json.dumps({"bytes": frames.nbytes + hashes.nbytes}).encode() + b"\n")
        out.write(memoryview(frames).cast("B"))
        out.write(memoryview(hashes).cast("B"))
        out.flush()


class Baseline:
    def __init__(self, limits):
        self.proc = subprocess.Popen([sys.executable, __file__, "--baseline-child", json.dumps(limits.to_json())],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(ROOT))

    def sample(self, path: Path, count: int) -> None:
        self.proc.stdin.write(json.dumps({"path": str(path), "count": count}).encode() + b"\n")
        self.proc.stdin.flush()
        size = json.loads(self.proc.stdout.readline())["bytes"]
        while size:
            size -= len(self.proc.stdout.read(min(size, 1 << 20)))

    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


class Worker:
    def __init__(self, config):
        from worker.app import build_sampler, decode_limits

        self.sampler = build_sampler(config.media, decode_limits(config.media, config.bank))

    def sample(self, path: Path, count: int) -> None:
        self.sampler.sample(path, count)

    def pid(self) -> int:
        child = self.sampler._idle.get_nowait()  # the one child, idle after its answer
        self.sampler._idle.put(child)
        return child.proc.pid

    def close(self) -> None:
        self.sampler.close()


def main() -> int:
    if sys.argv[1:2] == ["--baseline-child"]:
        baseline_child()
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--frames", type=int, default=None, help="frames a video (the worker's default)")
    parser.add_argument("--cache", type=Path, default=None, help="where the clips are kept")
    args = parser.parse_args()

    importlib.import_module("torch")  # the worker's process has torch loaded; it goes before decord

    from clips import DEFAULT_CACHE, ClipSpec, ensure_clips
    from worker.app import decode_limits
    from worker.config import Config

    config = Config()
    count = args.frames or config.media.frames_per_video
    specs = (ClipSpec(720, 10), ClipSpec(1080, 10), ClipSpec(1080, 60))
    clips = ensure_clips(specs, args.cache or DEFAULT_CACHE)
    limits = decode_limits(config.media, config.bank)
    print(f"decoder child memory: {count} frames a video, {args.repeat} fresh children a side and clip")
    print(f"{'clip':<28} {'side':<9} {'peak RSS MiB':>20} {'VmSize MiB':>11} {'decode s':>9}")
    worst = {"worker": 0, "baseline": 0}
    for spec, path in zip(specs, clips):
        figures = {"worker": [], "baseline": []}
        for _ in range(args.repeat):
            for side in ("worker", "baseline"):
                child = Worker(config) if side == "worker" else Baseline(limits)
                try:
                    child.sample(path, count)  # the child's start, then a first decode
                    started = time.perf_counter()
                    child.sample(path, count)  # the reused child's decode, timed
                    took = time.perf_counter() - started
                    figures[side].append((status(child.pid()), took))
                finally:
                    child.close()
        medians, times = {}, {}
        for side, runs in figures.items():
            times[side] = statistics.median(t for _, t in runs)
            peaks = [s["VmHWM"] for s, _ in runs]
            medians[side] = statistics.median(peaks)
            worst[side] = max(worst[side], max(peaks))
            print(f"{spec.name:<28} {side:<9} {medians[side] / MIB:>9.0f} (max {max(peaks) / MIB:>5.0f})"
                  f" {statistics.median(s['VmSize'] for s, _ in runs) / MIB:>11.0f}"
                  f" {statistics.median(t for _, t in runs):>9.2f}")
        print(f"{'':<28} worker / baseline: peak RSS {medians['worker'] / medians['baseline']:.2f}x, "
              f"decode time {times['worker'] / times['baseline']:.2f}x")
    print(f"worst peak RSS of any child: worker {worst['worker'] / MIB:.0f} MiB, "
          f"baseline {worst['baseline'] / MIB:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
