"""Which stage is the bottleneck: py-spy samples of the worker's pipeline, bucketed by stage.

    .venv/bin/python bench/profile_stages.py --threads 1 [--quick] [--out prof-1.txt]
    .venv/bin/python bench/profile_stages.py --threads 4

Runs ``bench/throughput.py --no-baseline --threads N`` under ``py-spy record --subprocesses``
(so the sandboxed decoder children are sampled too), then reads py-spy's collapsed stacks and
assigns each sample to the innermost pipeline stage on its stack. py-spy leaves idle threads
out by default, so the shares are of busy (on-CPU) samples: a thread waiting for the decoder
child or for the batcher counts nothing, and the decoder child's own work counts as decode.
Imports, model loading and warm-up are sampled too and left out (``setup``), as is the
benchmark's own RSS sampler; samples of native code with no Python frame (py-spy sees a
thread busy outside the interpreter, e.g. a torch worker thread) are listed as such.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parent

# (stage, a marker in a frame "function (file:line)"); the innermost match wins
STAGES = (
    ("decode", "decoding.py"),
    ("decode", "sandbox.py"),
    ("fetch", "media.py"),
    ("detect_faces", "faces.py"),
    ("detect_faces", "dfdc_preprocess.py"),
    ("detect_faces", "facenet_pytorch"),
    ("crop", "crops.py"),
    ("crop", "crops ("),
    ("classify", "inference.py"),
    ("classify", "batching.py"),
    ("classify", "timm/"),
    ("hash_match", "worker/bank/"),
    ("tracks_policy", "tracks.py"),
    ("tracks_policy", "track_scores.py"),
    ("tracks_policy", "policy.py"),
)
# imports, model loading and warm-up (inside the sides' constructors), making the model file
SETUP = ("Side.__init__ (throughput.py", "bench_model_file (throughput.py", "input_videos (throughput.py",
         "_find_and_load (", "classifier_ceiling (throughput.py")
BENCH_OWN = ("RssSampler.", "GpuSampler.")


def stage_of(stack: str) -> str:
    frames = stack.split(";")
    if any(marker in f for f in frames for marker in SETUP):
        return "setup"
    if any(f.startswith(BENCH_OWN) for f in frames):
        return "bench_sampler"
    if all(f.startswith("process ") for f in frames):
        return "native_no_python_frame"
    for frame in reversed(frames):
        for stage, marker in STAGES:
            if marker in frame:
                return stage
    return "other"


def shares(raw: Path) -> tuple[Counter, int]:
    counts: Counter = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[stage_of(stack)] += int(n)
    return counts, sum(counts.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="worker.processing_threads")
    p.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    p.add_argument("--out", type=Path, help="keep py-spy's collapsed stacks here")
    p.add_argument("--py-spy", default=shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"))
    args, rest = p.parse_known_args(argv)
    out = args.out or Path(tempfile.mkstemp(prefix="pyspy-", suffix=".txt")[1])
    command = [args.py_spy, "record", "--subprocesses", "--nonblocking", "-r", str(args.rate),
               "--format", "raw", "-o", str(out), "--", sys.executable, str(BENCH / "throughput.py"),
               "--no-baseline", "--threads", str(args.threads), *rest]
    print(" ".join(command), flush=True)
    # throughput.py would start itself again under the worker's allocator settings, and py-spy
    # cannot follow an exec: start it with them already set
    sys.path.insert(0, str(BENCH.parent))
    from worker.runtime.allocator import tuned_environment

    code = subprocess.call(command, env=tuned_environment(os.environ))
    if code != 0:
        return code
    counts, total = shares(out)
    timed = {k: v for k, v in counts.items() if k not in ("setup", "bench_sampler")}
    busy = sum(timed.values()) or 1
    print(f"\npy-spy, worker with {args.threads} in flight: {total} busy samples "
          f"({counts.get('setup', 0)} in imports, model loading and warm-up, and "
          f"{counts.get('bench_sampler', 0)} in the benchmark's RSS sampler, left out below)")
    for stage, n in sorted(timed.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:<14} {n / busy:6.1%}")
    top = max(timed, key=timed.get) if timed else "none"
    print(f"bottleneck (most busy samples): {top}   (collapsed stacks: {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
