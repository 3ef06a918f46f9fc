"""Decoding in a sandboxed child process, with a deadline and an address-space cap.

Uploaded files are hostile input to FFmpeg. A decoder that hangs, spins or allocates
without bound must cost one event, never the worker. So decoding runs in a child process
(``python -m worker.media.sandbox``) that caps its own address space; the worker kills it when
the deadline passes and starts a fresh one for the next event. The child imports no torch.

The child answers over its stdout with a JSON header line and then the raw frame bytes;
nothing it sends is unpickled, so a compromised decoder cannot run code in the worker.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import queue
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from worker.core import dead_letters
from worker.core.dead_letters import DeadLetter
from worker.core.pipeline import SampledFrames
from worker.media.limits import DecodeLimits

_MAX_HEADER = 1 << 20
_PIPE_BYTES = 1 << 20  # Linux's default pipe-max-size: 16 times fewer wake-ups than 64 KiB


@dataclass(frozen=True)
class FramesHeader:
    """The child's answer line, ahead of the raw bytes of the frames and the hash frames.

    The parent trusts none of it: :meth:`parse` checks every shape against what was asked
    and against the limits before a byte of frames is read.
    """

    shape: tuple[int, int, int, int]
    indices: tuple[int, ...]
    timestamps_s: tuple[float, ...]
    frame_count: int
    fps: float
    hash_shape: tuple[int, int, int, int] | None = None
    hash_indices: tuple[int, ...] = ()
    hash_timestamps_s: tuple[float, ...] = ()

    @classmethod
    def of(cls, sampled: SampledFrames) -> "FramesHeader":
        hashes = sampled.hash_frames
        return cls(tuple(sampled.frames.shape), sampled.indices, sampled.timestamps_s,
                   sampled.frame_count, sampled.fps, None if hashes is None else tuple(hashes.shape),
                   sampled.hash_indices, sampled.hash_timestamps_s)

    def to_json(self) -> bytes:
        return json.dumps({"status": "ok", **asdict(self)}).encode() + b"\n"

    @classmethod
    def parse(cls, document: dict, count: int, limits: DecodeLimits) -> "FramesHeader":
        """The header of an ``ok`` answer; :class:`DeadLetter` (decoder_crashed) if it is
        not one the worker could have asked for."""
        try:
            header = cls(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in document.items() if k != "status"})
        except TypeError as exc:
            raise DeadLetter(dead_letters.DECODER_CRASHED, f"the decoder sent a bad header: {exc}") from None
        n, h, w, c = header.shape
        if not (0 <= n <= count and c == 3 and 0 < h * w <= limits.max_pixels):
            raise DeadLetter(dead_letters.DECODER_CRASHED, f"the decoder sent an impossible shape {list(header.shape)}")
        if header.hash_shape:
            m, hh, hw, hc = header.hash_shape
            side = limits.hash_max_side
            if not (0 < m <= limits.hash_max_frames and hc == 3 and 0 < hh <= side and 0 < hw <= side):
                raise DeadLetter(dead_letters.DECODER_CRASHED,
                                 f"the decoder sent impossible hash frames {list(header.hash_shape)}")
        return header

    def sampled(self, frames: np.ndarray, hash_frames: np.ndarray | None) -> SampledFrames:
        return SampledFrames(frames=frames, indices=self.indices, timestamps_s=self.timestamps_s,
                             frame_count=self.frame_count, fps=self.fps, hash_frames=hash_frames,
                             hash_indices=self.hash_indices, hash_timestamps_s=self.hash_timestamps_s)


class SandboxedSampler:
    """A FrameSampler whose decoding happens in reusable child processes."""

    def __init__(self, timeout_s: float, memory_bytes: int, limits: DecodeLimits | None = None,
                 **changes):
        """``limits``, with any of its fields changed by keyword (``max_pixels=...``);
        ``memory_bytes``: the child's address-space budget for decoding."""
        self.timeout_s = timeout_s
        self.limits = replace(limits or DecodeLimits(), **changes)
        self._settings = {"limits": self.limits.to_json(), "memory_bytes": memory_bytes}
        self._idle: queue.SimpleQueue[_Child] = queue.SimpleQueue()

    def sample(self, path: Path, count: int) -> SampledFrames:
        try:
            child = self._idle.get_nowait()
        except queue.Empty:
            child = _Child(self._settings)
        deadline = time.monotonic() + self.timeout_s
        try:
            result = child.ask(path, count, deadline, self.limits)
        except _Answered as answer:  # the child judged the file and is fine: keep it
            self._idle.put(child)
            raise answer.dead_letter from None
        except BaseException:
            child.kill()
            raise
        self._idle.put(child)
        return result

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                return


class _Answered(Exception):
    """A dead letter the child reported in an orderly answer."""

    def __init__(self, dead_letter: DeadLetter):
        self.dead_letter = dead_letter


class _Child:
    def __init__(self, settings: dict):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.media.sandbox", json.dumps(settings)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            cwd=str(Path(__file__).resolve().parents[2]), start_new_session=True)
        self._pending = b""
        try:  # the frames of one 1080p video are ~50 MB: move them in large pieces
            fcntl.fcntl(self.proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        except (AttributeError, OSError):  # not Linux, or a lower pipe-max-size: the default
            pass

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:  # unflushed bytes for a child that is gone
                pass

    def ask(self, path: Path, count: int, deadline: float, limits: DecodeLimits) -> SampledFrames:
        try:
            self.proc.stdin.write(json.dumps({"path": str(path), "count": count}).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._crashed() from None
        document = json.loads(self._read_line(deadline))
        if document["status"] == "dead_letter":
            raise _Answered(DeadLetter(document["reason"], document["message"]))
        if document["status"] != "ok":
            raise DeadLetter(dead_letters.CORRUPT_VIDEO, document.get("message", "decoding failed"))
        header = FramesHeader.parse(document, count, limits)
        frames = self._read_exactly(math.prod(header.shape), deadline).reshape(header.shape)
        hash_frames = None
        if header.hash_shape:
            hash_frames = self._read_exactly(math.prod(header.hash_shape), deadline).reshape(header.hash_shape)
        if self._pending:
            raise DeadLetter(dead_letters.DECODER_CRASHED, "the decoder sent more bytes than announced")
        return header.sampled(frames, hash_frames)

    def _wait_readable(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([self.proc.stdout], [], [], remaining)[0]:
            raise DeadLetter(dead_letters.TIMEOUT, "decoding did not finish before the deadline; decoder killed")

    def _read_line(self, deadline: float) -> bytes:
        line = b""
        while b"\n" not in line:
            if len(line) > _MAX_HEADER:
                raise DeadLetter(dead_letters.DECODER_CRASHED, "the decoder sent an oversized header")
            self._wait_readable(deadline)
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise self._crashed()
            line += chunk
        head, _, rest = line.partition(b"\n")
        self._pending = rest
        return head

    def _read_exactly(self, size: int, deadline: float) -> np.ndarray:
        """``size`` bytes, read straight into one buffer (no copies on the way). The buffer is
        not zeroed first: a bytearray's zero fill of a 1080p video's 50 MB held the GIL for
        tens of milliseconds."""
        buffer = np.empty(size, np.uint8)
        view = memoryview(buffer)
        filled = min(len(self._pending), size)
        view[:filled] = self._pending[:filled]
        self._pending = self._pending[filled:]
        while filled < size:
            self._wait_readable(deadline)
            got = os.readv(self.proc.stdout.fileno(), [view[filled:]])
            if not got:
                raise self._crashed()
            filled += got
        return buffer  # writable, so the frames can be handed to torch without a copy

    def _crashed(self) -> DeadLetter:
        code = self.proc.wait()
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        return DeadLetter(dead_letters.DECODER_CRASHED, f"the decoder process died ({how})")


def _mapped_bytes() -> int:
    """This process's address space now (Linux: VmSize); 0 where it cannot be read."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _serve(settings: dict) -> None:
    """The child: cap the address space, then answer decode requests until stdin closes."""
    import resource

    from worker.media.decoding import DecordSampler

    if settings["memory_bytes"] > 0:
        # The cap is a budget for decoding, on top of what the process already maps: importing
        # decord alone maps several GiB of address space, so an absolute 4 GiB cap left too
        # little to decode one 32-frame 1080p sample (docs/benchmarks.md).
        limit = _mapped_bytes() + settings["memory_bytes"]
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sampler = DecordSampler(DecodeLimits.from_json(settings["limits"]))
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        request = json.loads(line)
        try:
            sampled = sampler.sample(Path(request["path"]), int(request["count"]))
        except DeadLetter as failure:
            out.write(json.dumps({"status": "dead_letter", "reason": failure.reason,
                                  "message": failure.message}).encode() + b"\n")
        except MemoryError:
            out.write(json.dumps({"status": "dead_letter", "reason": dead_letters.DECODER_CRASHED,
                                  "message": "the decoder ran out of its memory cap"}).encode() + b"\n")
        else:
            frames = np.ascontiguousarray(sampled.frames)
            hashes = None if sampled.hash_frames is None else np.ascontiguousarray(sampled.hash_frames)
            out.write(FramesHeader.of(sampled).to_json())
            out.write(memoryview(frames).cast("B"))
            if hashes is not None:
                out.write(memoryview(hashes).cast("B"))
        out.flush()


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
