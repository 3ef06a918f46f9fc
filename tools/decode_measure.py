"""Decode measurements behind the pipeline's choices (docs/runtime.md, "Pipelined runtime").

Prints: whether decord releases the GIL (threads vs one thread, and a Python counter run
beside a decode), what sparse ``get_batch`` costs against decoding every frame (keyframe
interval 30 and 250), and what decoding at reduced resolution (decord's width/height)
saves. Generated clips are cached under ``--cache`` (never committed).

    python tools/decode_measure.py --cache /tmp/decode-clips
"""
from __future__ import annotations

import argparse
import fractions
import threading
import time
from pathlib import Path

import torch  # noqa: F401  before decord (docs/runtime.md, "Pitfalls")
import av
import decord
import numpy as np

from worker.testing.samples import sample_video


def make_clip(path: Path, width: int, height: int, seconds: int, keyint: int, fps: int = 30) -> Path:
    """carphone's frames upscaled to width x height, H.264 with the given keyframe interval."""
    if path.exists():
        return path
    source = av.open(str(sample_video("carphone_pristine.mp4")))
    frames = [f.to_ndarray(format="rgb24") for f in source.decode(video=0)]
    source.close()
    out = av.open(str(path.with_suffix(".tmp.mp4")), "w")
    stream = out.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"g": str(keyint), "keyint_min": str(keyint), "preset": "ultrafast"}
    stream.time_base = fractions.Fraction(1, fps)
    for i in range(seconds * fps):
        picture = av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24").reformat(width, height)
        picture.pts = i
        out.mux(stream.encode(picture))
    out.mux(stream.encode())
    out.close()
    path.with_suffix(".tmp.mp4").rename(path)
    return path


def sparse(n: int, count: int = 32) -> list[int]:
    return sorted({int(i) for i in np.linspace(0, n - 1, num=count).astype(np.int64)})


def decode_sparse(path: Path, width: int = -1, height: int = -1, threads: int = 1) -> np.ndarray:
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), width=width, height=height,
                                num_threads=threads)
    return reader.get_batch(sparse(len(reader))).asnumpy()


def decode_all(path: Path, threads: int = 1) -> int:
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
    n = 0
    for _ in range(len(reader)):
        reader.next()
        n += 1
    return n


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def gil(path: Path, jobs: int = 4) -> None:
    one = timed(lambda: [decode_sparse(path) for _ in range(jobs)], 2)

    def two_threads():
        threads = [threading.Thread(target=lambda: [decode_sparse(path) for _ in range(jobs // 2)])
                   for _ in range(2)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    two = timed(two_threads, 2)
    print(f"gil: {jobs} sparse decodes, 1 thread {one:.2f}s, 2 threads {two:.2f}s, "
          f"speed-up {one / two:.2f}x (2 cores, decord num_threads=1)")
    # A pure-Python counter beside a decode: if decord held the GIL, it would barely advance.
    counts = {}

    def count(key, until):
        n = 0
        while not until.is_set():
            n += 1
        counts[key] = n
    for label, work in (("idle", lambda: time.sleep(one / jobs)), ("decoding", lambda: decode_sparse(path))):
        until = threading.Event()
        t = threading.Thread(target=count, args=(label, until))
        started = time.perf_counter()
        t.start()
        work()
        until.set()
        t.join()
        counts[label] /= time.perf_counter() - started
    print(f"gil: python counter beside a sleep {counts['idle']:.3g}/s, beside a decode "
          f"{counts['decoding']:.3g}/s ({counts['decoding'] / counts['idle']:.0%})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seek-only", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/decode-clips"))
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    clips = {
        "720p 10s g30": make_clip(args.cache / "720_10_g30.mp4", 1280, 720, 10, 30),
        "720p 10s g250": make_clip(args.cache / "720_10_g250.mp4", 1280, 720, 10, 250),
        "720p 60s g30": make_clip(args.cache / "720_60_g30.mp4", 1280, 720, 60, 30),
        "720p 60s g250": make_clip(args.cache / "720_60_g250.mp4", 1280, 720, 60, 250),
        "1080p 10s g250": make_clip(args.cache / "1080_10_g250.mp4", 1920, 1080, 10, 250),
    }
    if "--seek-only" not in __import__("sys").argv:
        gil(clips["720p 10s g30"])
    for name, path in clips.items():
        n = len(decord.VideoReader(str(path)))
        keys = len(decord.VideoReader(str(path)).get_key_indices())
        s = timed(lambda: decode_sparse(path), 2)
        a = timed(lambda: decode_all(path), 1)
        print(f"seek: {name}: {n} frames, {keys} keyframes; 32 sparse get_batch {s:.2f}s, "
              f"every frame {a:.2f}s, ratio {a / s:.1f}x")
    for name in ("720p 60s g30", "720p 60s g250"):
        path = clips[name]
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        keys = np.asarray(reader.get_key_indices())
        snapped = sorted({int(keys[np.abs(keys - i).argmin()]) for i in sparse(len(reader))})
        def on_keys():
            r = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
            return r.get_batch(snapped).asnumpy()
        k = timed(on_keys, 2)
        print(f"seek: {name}: the {len(snapped)} keyframes nearest the 32 indices {k:.2f}s")
    if "--seek-only" in __import__("sys").argv:
        return
    for name in ("720p 10s g30", "1080p 10s g250"):
        path = clips[name]
        full = timed(lambda: decode_sparse(path), 2)
        reader = decord.VideoReader(str(path))
        h, w = reader[0].shape[:2]
        half = timed(lambda: decode_sparse(path, w // 2, h // 2), 2)
        small = decode_sparse(path, w // 2, h // 2)
        print(f"res: {name}: 32 frames full {w}x{h} {full:.2f}s ({w * h * 3 * 32 / 1e6:.0f} MB), "
              f"half {small.shape[2]}x{small.shape[1]} {half:.2f}s "
              f"({small.nbytes / 1e6:.0f} MB), saving {1 - half / full:.0%}")


if __name__ == "__main__":
    main()
