"""What reading an upload's content credentials costs, against decoding the same upload.

    .venv/bin/python bench/credentials.py [--repeat 5]

For each clip (the sample carphone video and the benchmark's 720p and 1080p clips, 10 s and
60 s), a copy is signed with a throwaway CA (an AI-generated ``c2pa.created`` manifest). Then,
``--repeat`` times and alternating, in warm children as the worker runs them:

- **credentials**: ``CredentialReader.read`` of the signed copy (the child validates the
  manifest, which hashes the whole file), and of the unsigned file (the box walk finds no
  store, so no child runs);
- **decode**: the worker's sandboxed decoder samples the signed copy (the default frames,
  hash frames and frame choice).

Each child's CPU time (user + system, from ``/proc/PID/stat``) and the wall time are read
around the call. Prints the mean CPU and median wall times and the credentials/decode CPU
ratio; decoding is only one
part of a video's CPU time (face detection and the classifier come on top), so the ratio
overstates the share. Linux only. Figures: docs/benchmarks.md, "Reading content credentials".
"""
from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_pid(pool) -> int:
    child = pool._idle.get_nowait()  # the one child, idle after its answer
    pool._idle.put(child)
    return child.proc.pid


def timed(call, pool):
    """(child CPU s, wall s) of one call on a warm child of ``pool``; CPU 0 when no child ran."""
    pid = idle_pid(pool) if not pool._idle.empty() else None
    before = cpu_seconds(pid) if pid else 0.0
    started = time.perf_counter()
    call()
    wall = time.perf_counter() - started
    return (cpu_seconds(pid) - before if pid else 0.0), wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=None, help="where the clips are kept")
    args = parser.parse_args()

    importlib.import_module("torch")  # the worker's process has torch loaded; it goes before decord

    from clips import DEFAULT_CACHE, ClipSpec, ensure_clips
    from worker.app import build_sampler, decode_limits
    from worker.config import Config
    from worker.provenance.sandbox import CredentialReader, ReaderSettings
    from worker.testing.credentials import sign_video
    from worker.testing.samples import sample_video
    from worker.testing.tls import CertificateAuthority

    config = Config()
    count = config.media.frames_per_video
    specs = (ClipSpec(720, 10), ClipSpec(1080, 10), ClipSpec(1080, 60))
    clips = [sample_video("carphone_pristine.mp4"), *ensure_clips(specs, args.cache or DEFAULT_CACHE)]
    with tempfile.TemporaryDirectory() as folder:
        ca = CertificateAuthority(Path(folder), "bench", organization="Bench CA")
        signer = ca.issue("Bench Signer", signing=True, organization="Bench Generator")
        settings = ReaderSettings.from_config(config.provenance.__class__(trust_anchors=str(ca.cert_path)))
        reader = CredentialReader(settings)
        sampler = build_sampler(config.media, decode_limits(config.media, config.bank))
        print(f"content credentials against decoding: {args.repeat} runs a clip, warm children, "
              f"{count} frames a video")
        print(f"{'clip':<28} {'MB':>6} {'signed CPU ms':>14} {'wall ms':>8} {'unsigned wall ms':>17} "
              f"{'decode CPU ms':>14} {'wall ms':>8} {'CPU ratio':>10}")
        worst = 0.0
        try:
            for path in clips:
                signed = sign_video(path, Path(folder) / f"signed-{path.name}", signer)
                assert reader.read(signed).state == "trusted"  # warms the child, and checks the copy
                sampler.sample(signed, count)
                runs = {"signed": [], "unsigned": [], "decode": []}
                for _ in range(args.repeat):
                    runs["signed"].append(timed(lambda: reader.read(signed), reader))
                    runs["unsigned"].append(timed(lambda: reader.read(path), reader))
                    runs["decode"].append(timed(lambda: sampler.sample(signed, count), sampler))
                # CPU: the mean (the kernel counts in 10 ms ticks); wall: the median
                med = {k: (statistics.fmean(c for c, _ in v), statistics.median(w for _, w in v))
                       for k, v in runs.items()}
                ratio = med["signed"][0] / med["decode"][0]
                worst = max(worst, ratio)
                print(f"{path.name:<28} {signed.stat().st_size / 1e6:>6.1f} {med['signed'][0] * 1e3:>14.1f} "
                      f"{med['signed'][1] * 1e3:>8.1f} {med['unsigned'][1] * 1e3:>17.2f} "
                      f"{med['decode'][0] * 1e3:>14.1f} {med['decode'][1] * 1e3:>8.1f} {ratio:>10.3f}")
        finally:
            reader.close()
            sampler.close()
    print(f"largest credentials/decode CPU ratio: {worst:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
