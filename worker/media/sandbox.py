"""Decoding in a sandboxed child process, with a deadline and an address-space cap.

Uploaded files are hostile input to FFmpeg. A decoder that hangs, spins or allocates
without bound must cost one event, never the worker. So decoding runs in a child process
(``python -m worker.media.sandbox``) that caps its own address space; the worker kills it when
the deadline passes and starts a fresh one for the next event. The child imports no torch.

The child answers over its stdout with a JSON header line and then the raw bytes of each
frame as it is decoded; nothing it sends is unpickled, so a compromised decoder cannot run
code in the worker. It imports decord without the CUDA libraries decord preloads, which
cost each child about 1 GiB resident for nothing (its CPU build uses none of them).
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
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from worker.core import dead_letters
from worker.core.dead_letters import DeadLetter
from worker.core.pipeline import SampledFrames, SampleLayout
from worker.media.limits import DecodeLimits
from worker.media.children import IdleChildren

_MAX_HEADER = 1 << 20
_PIPE_BYTES = 1 << 20  # Linux's default pipe-max-size: 16 times fewer wake-ups than 64 KiB


# The records that follow an ``ok`` header, each one tag byte ahead of its bytes: the next
# sampled frame, the next hash frame (both of the sizes the header announced), or a dead
# letter line for a frame that did not decode after the header was sent.
_FRAME, _HASH, _FAILED = b"F", b"H", b"E"


@dataclass(frozen=True)
class FramesHeader(SampleLayout):
    """The child's answer line, ahead of the frames and the hash frames, which it sends as
    they are decoded (the child never holds a whole sample: docs/benchmarks.md, "The decoder
    child's memory").

    The parent trusts none of it: :meth:`parse` checks every shape against what was asked
    and against the limits before a byte of frames is read.
    """

    @classmethod
    def of(cls, layout: SampleLayout) -> "FramesHeader":
        return cls(**{f.name: getattr(layout, f.name) for f in fields(SampleLayout)})

    def to_json(self) -> bytes:
        return json.dumps({"status": "ok", **asdict(self)}).encode() + b"\n"

    @classmethod
    def parse(cls, document: dict, count: int, limits: DecodeLimits) -> "FramesHeader":
        """The header of an ``ok`` answer; :class:`DeadLetter` (decoder_crashed) if it is
        not one the worker could have asked for."""
        try:
            header = cls(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in document.items() if k != "status"})
            n, h, w, c = header.shape
            if header.hash_shape:
                m, hh, hw, hc = header.hash_shape
            if not all(type(x) is int for x in (*header.shape, *(header.hash_shape or ()))):
                raise TypeError("a shape that is not whole numbers")
        except (TypeError, ValueError) as exc:
            raise DeadLetter(dead_letters.DECODER_CRASHED, f"the decoder sent a bad header: {exc}") from None
        if not (0 <= n <= count and c == 3 and 0 < h * w <= limits.max_pixels):
            raise DeadLetter(dead_letters.DECODER_CRASHED, f"the decoder sent an impossible shape {list(header.shape)}")
        if header.hash_shape:
            side = limits.hash_max_side
            if not (0 < m <= limits.hash_max_frames and hc == 3 and 0 < hh <= side and 0 < hw <= side):
                raise DeadLetter(dead_letters.DECODER_CRASHED,
                                 f"the decoder sent impossible hash frames {list(header.hash_shape)}")
        return header


class SandboxedSampler:
    """A FrameSampler whose decoding happens in reusable child processes."""

    def __init__(self, timeout_s: float, memory_bytes: int, limits: DecodeLimits | None = None,
                 **changes):
        """``limits``, with any of its fields changed by keyword (``max_pixels=...``);
        ``memory_bytes``: the child's address-space budget for decoding."""
        self.timeout_s = timeout_s
        self.limits = replace(limits or DecodeLimits(), **changes)
        self._settings = {"limits": self.limits.to_json(), "memory_bytes": memory_bytes}
        self._idle = IdleChildren()

    def sample(self, path: Path, count: int) -> SampledFrames:
        child = self._idle_child()
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

    def _idle_child(self) -> "_Child":
        return self._idle.take(lambda: _Child(self._settings))

    def close(self) -> None:
        self._idle.close()


class _Answered(Exception):
    """A dead letter the child reported in an orderly answer."""

    def __init__(self, dead_letter: DeadLetter):
        self.dead_letter = dead_letter


class _Child:
    def __init__(self, settings: dict, command: list[str] | None = None):
        """``command``: what runs as the child (tests stand a scripted one in)."""
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "worker.media.sandbox", json.dumps(settings)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            cwd=str(Path(__file__).resolve().parents[2]), start_new_session=True)
        self._pending = b""
        try:  # one 1080p frame is 6 MB: move it in large pieces
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

    def quiet(self) -> bool:
        """Alive, and nothing waiting on its stdout."""
        return self.proc.poll() is None and not select.select([self.proc.stdout], [], [], 0)[0]

    def ask(self, path: Path, count: int, deadline: float, limits: DecodeLimits) -> SampledFrames:
        try:
            self.proc.stdin.write(json.dumps({"path": str(path), "count": count}).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._crashed() from None
        document = self._read_document(deadline)
        if document.get("status") == "dead_letter":
            raise _Answered(self._dead_letter(document))
        if document.get("status") != "ok":
            raise DeadLetter(dead_letters.DECODER_CRASHED, "the decoder sent an answer of no known kind")
        header = FramesHeader.parse(document, count, limits)
        frames = np.empty(header.shape, np.uint8)  # writable, so torch can take it without a copy
        hashes = np.empty(header.hash_shape, np.uint8) if header.hash_shape else None
        filled = {_FRAME: 0, _HASH: 0}
        wanted = {_FRAME: len(frames), _HASH: 0 if hashes is None else len(hashes)}
        while filled != wanted:
            tag = self._read_tag(deadline)
            if tag == _FAILED:
                raise _Answered(self._dead_letter(self._read_document(deadline)))
            if tag not in filled or filled[tag] == wanted[tag]:
                raise DeadLetter(dead_letters.DECODER_CRASHED, f"the decoder sent an unexpected record {tag!r}")
            target = frames if tag == _FRAME else hashes
            self._read_into(memoryview(target[filled[tag]]).cast("B"), deadline)
            filled[tag] += 1
        if self._pending:
            raise DeadLetter(dead_letters.DECODER_CRASHED, "the decoder sent more bytes than announced")
        return header.sampled(frames, hashes)

    def _wait_readable(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([self.proc.stdout], [], [], remaining)[0]:
            raise DeadLetter(dead_letters.TIMEOUT, "decoding did not finish before the deadline; decoder killed")

    def _read_line(self, deadline: float) -> bytes:
        line, self._pending = self._pending, b""
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

    def _read_document(self, deadline: float) -> dict:
        try:
            document = json.loads(self._read_line(deadline))
        except ValueError:  # not JSON, or not UTF-8
            document = None
        if not isinstance(document, dict):
            raise DeadLetter(dead_letters.DECODER_CRASHED, "the decoder sent a line that is not a JSON object")
        return document

    @staticmethod
    def _dead_letter(document: dict) -> DeadLetter:
        """The dead letter the child reported; one with a reason not in the table is raised
        as decoder_crashed (the child is not kept)."""
        reason, message = document.get("reason"), document.get("message")
        if reason not in dead_letters.REASONS or not isinstance(message, str):
            raise DeadLetter(dead_letters.DECODER_CRASHED, f"the decoder reported an unknown failure {str(reason)[:80]!r}")
        return DeadLetter(reason, message[:1000])

    def _read_tag(self, deadline: float) -> bytes:
        tag = bytearray(1)
        self._read_into(memoryview(tag), deadline)
        return bytes(tag)

    def _read_into(self, view: memoryview, deadline: float) -> None:
        """Fill ``view`` from the child, straight into its buffer (no copies on the way). The
        frame buffers are not zeroed first: a bytearray's zero fill of a 1080p video's 50 MB
        held the GIL for tens of milliseconds."""
        size = len(view)
        filled = min(len(self._pending), size)
        view[:filled] = self._pending[:filled]
        self._pending = self._pending[filled:]
        while filled < size:
            self._wait_readable(deadline)
            got = os.readv(self.proc.stdout.fileno(), [view[filled:]])
            if not got:
                raise self._crashed()
            filled += got

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


# Loaded by decord2's import (``decord/_ffi/base.py``, ``_preload_cuda_libs``) though its CPU
# build, the one the child runs, links none of them: the CUDA driver's libraries, and every
# library of the ``nvidia-*`` wheels (torch's cuBLAS, cuDNN, NCCL...), which it finds through
# the ``nvidia`` namespace package.
_CUDA_DRIVER_LIBRARIES = ("libcuda.so", "libnvcuvid.so")


def _import_decord_without_cuda() -> None:
    """Import decord without the CUDA libraries it preloads: with torch's CUDA wheels
    installed they held about 600 MiB resident and 3.3 GiB of address space in each child
    (docs/benchmarks.md, "The decoder child's memory"). The ``nvidia`` package is hidden
    (``sys.modules[name] = None`` makes ``importlib.util.find_spec`` answer None) and the
    driver's libraries are refused while decord's modules load; then both are restored. A
    decord build that does need CUDA to load is imported again the ordinary way."""
    import ctypes
    import importlib

    real_cdll = ctypes.CDLL

    def refuse_cuda(name, *args, **kwargs):
        if isinstance(name, str) and os.path.basename(name).startswith(_CUDA_DRIVER_LIBRARIES):
            raise OSError(f"{name}: not loaded in the decoder child")
        return real_cdll(name, *args, **kwargs)

    hide = "nvidia" not in sys.modules
    if hide:
        sys.modules["nvidia"] = None
    ctypes.CDLL = refuse_cuda
    try:
        importlib.import_module("decord")
    except OSError:  # a CUDA build of libdecord: forget its partial import, load it whole
        for name in [m for m in sys.modules if m == "decord" or m.startswith("decord.")]:
            del sys.modules[name]
        ctypes.CDLL = real_cdll
        if hide:
            del sys.modules["nvidia"]
            hide = False
        importlib.import_module("decord")
    finally:
        ctypes.CDLL = real_cdll
        if hide:
            del sys.modules["nvidia"]


def _serve(settings: dict) -> None:
    """The child: cap the address space, then answer decode requests until stdin closes."""
    import resource

    _import_decord_without_cuda()
    from worker.media.decoding import FULL, DecordSampler

    if settings["memory_bytes"] > 0:
        # The cap is a budget for decoding, on top of what the process already maps (about
        # 0.5 GiB once decord is imported: docs/benchmarks.md).
        limit = _mapped_bytes() + settings["memory_bytes"]
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sampler = DecordSampler(DecodeLimits.from_json(settings["limits"]))
    send = _Sender(sys.stdout.fileno())
    for line in sys.stdin.buffer:
        request = json.loads(line)
        header_sent = False
        try:
            with sampler.stream(Path(request["path"]), int(request["count"])) as stream:
                send(FramesHeader.of(stream.layout).to_json())
                header_sent = True
                for kind, frame in stream:
                    send(_FRAME if kind == FULL else _HASH)
                    send(memoryview(np.ascontiguousarray(frame)).cast("B"))
        except DeadLetter as failure:
            send(_dead_letter(header_sent, failure.reason, failure.message))
        except MemoryError:
            send(_dead_letter(header_sent, dead_letters.DECODER_CRASHED, "the decoder ran out of its memory cap"))
        send.answered()


class _Sender:
    """Writes the child's answers to the parent from a thread of its own, in order, so that
    decoding never waits for the pipe. While the thread that called decord is anywhere
    else, decord's own decoding thread keeps decoding the packets it was handed ahead of
    time, to RGB, and keeps every frame: waiting on a full pipe after each frame let one
    1080p decode reach 1 GiB resident. The queue holds at most one video's answer (the
    parent asks for the next only when it has read the last), and usually a frame or two."""

    def __init__(self, fd: int):
        self._fd = fd
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name="decoder-sender", daemon=True).start()

    def __call__(self, data: bytes | memoryview) -> None:
        self._queue.put(data)

    def answered(self) -> None:
        """The answer is all queued: once it is sent, give the freed heap back to the
        system, so that an idle child holds what it needs and no more."""
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                _release_free_memory()
                continue
            data = memoryview(data)
            try:
                while data:
                    data = data[os.write(self._fd, data):]
            except OSError:  # the parent is gone, or killed us on purpose: nothing to answer
                os._exit(1)


def _release_free_memory() -> None:
    """glibc's ``malloc_trim``: the heap a video's frames fragmented, back to the system
    (about 100 MiB after a 1080p video). Nothing where the C library has none."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _dead_letter(header_sent: bool, reason: str, message: str) -> bytes:
    """The answer for a video that failed: the whole answer, or the record that ends one
    whose header (and maybe some frames) went out already."""
    if header_sent:
        return _FAILED + json.dumps({"reason": reason, "message": message}).encode() + b"\n"
    return json.dumps({"status": "dead_letter", "reason": reason, "message": message}).encode() + b"\n"


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
