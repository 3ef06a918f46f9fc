"""Decoding in a sandboxed child process, with a deadline and an address-space cap.

Uploaded files are hostile input to FFmpeg. A decoder that hangs, spins or allocates
without bound must cost one event, never the worker. So decoding runs in a child process
(``python -m worker.sandbox``) that caps its own address space; the worker kills it when
the deadline passes and starts a fresh one for the next event. The child imports no torch.

The child answers over its stdout with a JSON header line and then the raw frame bytes;
nothing it sends is unpickled, so a compromised decoder cannot run code in the worker.
"""
from __future__ import annotations

import json
import os
import queue
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import errors
from .errors import DeadLetter
from .pipeline import SampledFrames

_MAX_HEADER = 1 << 20


class SandboxedSampler:
    """A FrameSampler whose decoding happens in reusable child processes."""

    def __init__(self, timeout_s: float, memory_bytes: int, threads: int = 0,
                 max_pixels: int = 4096 * 4096, max_duration_s: float = 3 * 3600.0):
        self.timeout_s = timeout_s
        self.max_pixels = max_pixels
        self._settings = {"threads": threads, "max_pixels": max_pixels,
                          "max_duration_s": max_duration_s, "memory_bytes": memory_bytes}
        self._idle: queue.SimpleQueue[_Child] = queue.SimpleQueue()

    def sample(self, path: Path, count: int) -> SampledFrames:
        try:
            child = self._idle.get_nowait()
        except queue.Empty:
            child = _Child(self._settings)
        deadline = time.monotonic() + self.timeout_s
        try:
            result = child.ask(path, count, deadline, self.max_pixels)
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
            [sys.executable, "-m", "worker.sandbox", json.dumps(settings)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            cwd=str(Path(__file__).resolve().parent.parent), start_new_session=True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:  # unflushed bytes for a child that is gone
                pass

    def ask(self, path: Path, count: int, deadline: float, max_pixels: int) -> SampledFrames:
        try:
            self.proc.stdin.write(json.dumps({"path": str(path), "count": count}).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._crashed() from None
        header = json.loads(self._read_line(deadline))
        if header["status"] == "dead_letter":
            raise _Answered(DeadLetter(header["reason"], header["message"]))
        if header["status"] != "ok":
            raise DeadLetter(errors.CORRUPT_VIDEO, header.get("message", "decoding failed"))
        n, h, w, c = header["shape"]
        if not (0 <= n <= count and c == 3 and 0 < h * w <= max_pixels):
            raise DeadLetter(errors.DECODER_CRASHED, f"the decoder sent an impossible shape {header['shape']}")
        frames = np.frombuffer(self._read_exactly(n * h * w * c, deadline), np.uint8).reshape(n, h, w, c)
        return SampledFrames(frames=frames, indices=tuple(header["indices"]),
                             timestamps_s=tuple(header["timestamps_s"]),
                             frame_count=header["frame_count"], fps=header["fps"])

    def _wait_readable(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([self.proc.stdout], [], [], remaining)[0]:
            raise DeadLetter(errors.TIMEOUT, "decoding did not finish before the deadline; decoder killed")

    def _read_line(self, deadline: float) -> bytes:
        line = b""
        while b"\n" not in line:
            if len(line) > _MAX_HEADER:
                raise DeadLetter(errors.DECODER_CRASHED, "the decoder sent an oversized header")
            self._wait_readable(deadline)
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise self._crashed()
            line += chunk
        head, _, rest = line.partition(b"\n")
        self._pending = rest
        return head

    def _read_exactly(self, size: int, deadline: float) -> bytearray:
        buffer = bytearray(self._pending)
        while len(buffer) < size:
            self._wait_readable(deadline)
            chunk = os.read(self.proc.stdout.fileno(), min(1 << 22, size - len(buffer)))
            if not chunk:
                raise self._crashed()
            buffer += chunk
        if len(buffer) != size:
            raise DeadLetter(errors.DECODER_CRASHED, "the decoder sent more bytes than announced")
        self._pending = b""
        return buffer  # writable, so the frames can be handed to torch without a copy

    def _crashed(self) -> DeadLetter:
        code = self.proc.wait()
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        return DeadLetter(errors.DECODER_CRASHED, f"the decoder process died ({how})")


def _serve(settings: dict) -> None:
    """The child: cap the address space, then answer decode requests until stdin closes."""
    import resource

    from .decoding import DecordSampler

    if settings["memory_bytes"] > 0:
        resource.setrlimit(resource.RLIMIT_AS, (settings["memory_bytes"], settings["memory_bytes"]))
    sampler = DecordSampler(settings["threads"], settings["max_pixels"], settings["max_duration_s"])
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        request = json.loads(line)
        try:
            sampled = sampler.sample(Path(request["path"]), int(request["count"]))
        except DeadLetter as failure:
            out.write(json.dumps({"status": "dead_letter", "reason": failure.reason,
                                  "message": failure.message}).encode() + b"\n")
        except MemoryError:
            out.write(json.dumps({"status": "dead_letter", "reason": errors.DECODER_CRASHED,
                                  "message": "the decoder ran out of its memory cap"}).encode() + b"\n")
        else:
            frames = np.ascontiguousarray(sampled.frames)
            out.write(json.dumps({"status": "ok", "shape": list(frames.shape),
                                  "indices": list(sampled.indices),
                                  "timestamps_s": list(sampled.timestamps_s),
                                  "frame_count": sampled.frame_count,
                                  "fps": sampled.fps}).encode() + b"\n")
            out.write(memoryview(frames).cast("B"))
        out.flush()


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
