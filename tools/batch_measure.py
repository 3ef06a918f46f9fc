"""Face-detection throughput against the batch size, for ``faces.max_batch``'s default.

MTCNN (the worker's MtcnnDetector, real weights) on 64 frames of a 720p clip made by
tools/decode_measure.py, in device calls of 4, 16 and 64 frames; also what a single
video's flush costs, which bounds a sensible ``faces.max_wait_ms``.

    python tools/batch_measure.py --clip /tmp/decode-clips/720_10_g30.mp4 [--device cuda]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from worker.faces.mtcnn import MtcnnDetector
from worker.media.decoding import DecordSampler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clip", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="4,16,64")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    frames = DecordSampler().sample(args.clip, 64).frames
    device = torch.device(args.device)
    for size in (int(s) for s in args.sizes.split(",")):
        detector = MtcnnDetector(device, batch_size=size)
        detector.detect(frames[:size])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        found = detector.detect(frames)
        if device.type == "cuda":
            torch.cuda.synchronize()
        took = time.perf_counter() - started
        faces = sum(len(f) for f in found)
        print(f"mtcnn {args.device}: batch {size:3d}: {len(frames) / took:6.1f} frames/s "
              f"({took / (len(frames) / size) * 1000:.0f} ms a call, {faces} faces)")


if __name__ == "__main__":
    main()
