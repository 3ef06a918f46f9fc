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
import os
import queue
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from worker.core import dead_letters
from worker.core.dead_letters import DeadLetter
from worker.core.pipeline import SampledFrames

_MAX_HEADER = 1 << 20
_PIPE_BYTES = 1 << 20  # Linux's default pipe-max-size: 16 times fewer wake-ups than 64 KiB


class SandboxedSampler:
    """A FrameSampler whose decoding happens in reusable child processes."""

    def __init__(self, timeout_s: float, memory_bytes: int, threads: int = 0,
                 max_pixels: int = 4096 * 4096, max_duration_s: float = 3 * 3600.0,
                 hash_rate_hz: float = 0.0, hash_max_frames: int = 300, hash_max_side: int = 256,
                 hash_min_frames: int = 0, frame_slack: float = 0.0):
        self.timeout_s = timeout_s
        self.max_pixels = max_pixels
        self._settings = {"threads": threads, "max_pixels": max_pixels,
                          "max_duration_s": max_duration_s, "memory_bytes": memory_bytes,
                          "hash_rate_hz": hash_rate_hz, "hash_max_frames": hash_max_frames,
                          "hash_max_side": hash_max_side, "hash_min_frames": hash_min_frames,
                          "frame_slack": frame_slack}
        self._idle: queue.SimpleQueue[_Child] = queue.SimpleQueue()

    def sample(self, path: Path, count: int) -> SampledFrames:
        try:
            child = self._idle.get_nowait()
        except queue.Empty:
            child = _Child(self._settings)
        deadline = time.monotonic() + self.timeout_s
        try:
            result = child.ask(path, count, deadline, self.max_pixels, self._settings)
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

    def ask(self, path: Path, count: int, deadline: float, max_pixels: int,
            settings: dict) -> SampledFrames:
        try:
            self.proc.stdin.write(json.dumps({"path": str(path), "count": count}).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._crashed() from None
        header = json.loads(self._read_line(deadline))
        if header["status"] == "dead_letter":
            raise _Answered(DeadLetter(header["reason"], header["message"]))
        if header["status"] != "ok":
            raise DeadLetter(dead_letters.CORRUPT_VIDEO, header.get("message", "decoding failed"))
        n, h, w, c = header["shape"]
        if not (0 <= n <= count and c == 3 and 0 < h * w <= max_pixels):
            raise DeadLetter(dead_letters.DECODER_CRASHED, f"the decoder sent an impossible shape {header['shape']}")
        frames = self._read_exactly(n * h * w * c, deadline).reshape(n, h, w, c)
        hash_frames = None
        if header.get("hash_shape"):
            m, hh, hw, hc = header["hash_shape"]
            side = settings["hash_max_side"]
            if not (0 < m <= settings["hash_max_frames"] and hc == 3 and 0 < hh <= side and 0 < hw <= side):
                raise DeadLetter(dead_letters.DECODER_CRASHED,
                                 f"the decoder sent impossible hash frames {header['hash_shape']}")
            hash_frames = self._read_exactly(m * hh * hw * hc, deadline).reshape(m, hh, hw, hc)
        if self._pending:
            raise DeadLetter(dead_letters.DECODER_CRASHED, "the decoder sent more bytes than announced")
        return SampledFrames(frames=frames, indices=tuple(header["indices"]),
                             timestamps_s=tuple(header["timestamps_s"]),
                             frame_count=header["frame_count"], fps=header["fps"],
                             hash_frames=hash_frames,
                             hash_indices=tuple(header.get("hash_indices", ())),
                             hash_timestamps_s=tuple(header.get("hash_timestamps_s", ())))

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
        # decord alone maps about 3.4 GiB of address space (measured with VmSize), so an
        # absolute 4 GiB cap left too little to decode one 32-frame 1080p sample.
        limit = _mapped_bytes() + settings["memory_bytes"]
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sampler = DecordSampler(settings["threads"], settings["max_pixels"], settings["max_duration_s"],
                            settings["hash_rate_hz"], settings["hash_max_frames"],
                            settings["hash_max_side"], settings["hash_min_frames"],
                            settings["frame_slack"])
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
            out.write(json.dumps({"status": "ok", "shape": list(frames.shape),
                                  "indices": list(sampled.indices),
                                  "timestamps_s": list(sampled.timestamps_s),
                                  "frame_count": sampled.frame_count, "fps": sampled.fps,
                                  "hash_shape": None if hashes is None else list(hashes.shape),
                                  "hash_indices": list(sampled.hash_indices),
                                  "hash_timestamps_s": list(sampled.hash_timestamps_s),
                                  }).encode() + b"\n")
            out.write(memoryview(frames).cast("B"))
            if hashes is not None:
                out.write(memoryview(hashes).cast("B"))
        out.flush()


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
