"""The sandboxed decoder child's memory: a 1080p upload, sampled with the worker's defaults,
must cost the child at most 300 MiB resident at its peak, and the child must load no CUDA or
torch library (decord2 used to preload every pip-installed CUDA library at import: about
1 GiB resident and 3.4 GiB of address space per child, for nothing: its CPU build needs none).

The child is started the way the worker starts it (``worker.app.build_sampler``) and found
in this process's tree, so the figures are the kernel's (``/proc/<pid>/status``, ``maps``),
read while the idle child is still alive after the decode.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from worker.app import build_sampler, decode_limits
from worker.config import Config
from worker.media.decoding import DecordSampler
from worker.media.sandbox import SandboxedSampler
from worker.testing.samples import sample_video

from ..media_factory import set_mp4_rotation, write_video

MIB = 1 << 20
PEAK_RSS_LIMIT = 300 * MIB
# Mapped libraries the decoder child must never load: torch, and any CUDA library (the
# driver's, or the nvidia-* wheels' that torch ships with).
FORBIDDEN = ("libtorch", "libc10", "libcuda.so", "libnvcuvid", "libcudart", "libcublas",
             "libcudnn", "libnccl", "/nvidia/")


def _decoder_children(before: set[int]) -> list[int]:
    """The sandbox children started since ``before`` (this process's children then)."""
    found = []
    for pid in _children(os.getpid()) - before:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker.media.sandbox" in cmdline:
            found.append(pid)
    return found


def _children(pid: int) -> set[int]:
    kids: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            kids.update(int(k) for k in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        except OSError:
            pass
    return kids


def _status(pid: int) -> dict[str, int]:
    """The child's VmSize, VmRSS and VmHWM, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmSize", "VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def _mapped_libraries(pid: int) -> set[str]:
    paths = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and ".so" in parts[5]:
            paths.add(parts[5])
    return paths


@pytest.fixture(scope="module")
def clip_1080p(tmp_path_factory) -> Path:
    """4 s of 1920x1080 H.264 at 30 fps (120 frames, one keyframe every 30)."""
    path = tmp_path_factory.mktemp("decoder-memory") / "1080p.mp4"
    return write_video(path, width=1920, height=1080, frames=120, fps=30)


def _worker_sampler(config: Config) -> SandboxedSampler:
    sampler = build_sampler(config.media, decode_limits(config.media, config.bank))
    assert isinstance(sampler, SandboxedSampler)  # media.sandbox is on by default
    return sampler


def test_decoder_child_peak_rss_for_a_1080p_video_stays_under_300_mib(clip_1080p):
    config = Config()
    before = _children(os.getpid())
    sampler = _worker_sampler(config)
    try:
        sampled = sampler.sample(clip_1080p, config.media.frames_per_video)
        assert sampled.frames.shape == (32, 1080, 1920, 3)
        assert sampled.hash_frames is not None and sampled.hash_frames.shape[1:] == (144, 256, 3)
        (pid,) = _decoder_children(before)
        status = _status(pid)
        libraries = _mapped_libraries(pid)
    finally:
        sampler.close()
    loaded = sorted(lib for lib in libraries if any(name in lib for name in FORBIDDEN))
    assert not loaded, f"the decoder child loaded torch/CUDA libraries: {loaded[:5]}"
    assert status["VmHWM"] <= PEAK_RSS_LIMIT, (
        f"decoder child peak RSS {status['VmHWM'] / MIB:.0f} MiB > 300 MiB "
        f"(VmRSS {status['VmRSS'] / MIB:.0f} MiB, VmSize {status['VmSize'] / MIB:.0f} MiB)")


def test_decoder_child_imports_no_torch_and_still_decodes_bit_identically(clip_1080p, tmp_path):
    """The child's frames equal the in-process decoder's (which runs with torch loaded) bit
    for bit: sample videos, the 1080p clip, and a rotated clip, with and without hash frames."""
    rotated = set_mp4_rotation(write_video(tmp_path / "portrait.mp4", frames=40), 90)
    config = Config()
    limits = decode_limits(config.media, config.bank)
    sampler = SandboxedSampler(60, config.media.decoder_memory_bytes, limits)
    plain = SandboxedSampler(60, config.media.decoder_memory_bytes, limits, hash_rate_hz=0.0)
    assert "torch" in sys.modules  # the in-process reference decodes next to torch, as the worker would
    try:
        for path, count in [(sample_video("carphone_pristine.mp4"), 32), (sample_video("bikes.mp4"), 32),
                            (sample_video("bigbuckbunny.mp4"), 8), (clip_1080p, 32), (rotated, 8)]:
            for child, reference in [(sampler, DecordSampler(limits)),
                                     (plain, DecordSampler(limits, hash_rate_hz=0.0))]:
                got, want = child.sample(path, count), reference.sample(path, count)
                assert got.indices == want.indices and got.timestamps_s == want.timestamps_s
                assert (got.frame_count, got.fps) == (want.frame_count, want.fps)
                assert got.frames.dtype == np.uint8 and np.array_equal(got.frames, want.frames), path.name
                assert got.hash_indices == want.hash_indices
                assert got.hash_timestamps_s == want.hash_timestamps_s
                if want.hash_frames is None:
                    assert got.hash_frames is None
                else:
                    assert np.array_equal(got.hash_frames, want.hash_frames), path.name
    finally:
        sampler.close()
        plain.close()
