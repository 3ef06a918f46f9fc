"""Fetching an uploaded video with limits, and sampling its frames with decord."""
from __future__ import annotations

import os
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch  # noqa: F401  -- must be imported before decord: see README, "Pitfalls"
import decord

from . import errors
from .container import iso_bmff_truncated, sniff
from .errors import DeadLetter
from .pipeline import SampledFrames

decord.logging.set_level(decord.logging.QUIET)
_CHUNK = 1 << 20


class Fetcher:
    """Resolves ``file://`` and ``http(s)://`` video URIs to a local file, within limits."""

    def __init__(self, max_bytes: int, timeout_s: float, file_roots: Sequence[str] = (),
                 schemes: Sequence[str] = ("file", "http", "https")):
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.file_roots = tuple(Path(r).resolve() for r in file_roots)
        self.schemes = frozenset(schemes)

    @contextmanager
    def fetch(self, uri: str) -> Iterator[Path]:
        scheme = urllib.parse.urlsplit(uri).scheme.lower()
        if scheme not in self.schemes:
            raise DeadLetter(errors.UNSUPPORTED_URI_SCHEME, f"scheme {scheme!r} is not allowed")
        if scheme == "file":
            yield self._local(uri)
            return
        with tempfile.TemporaryDirectory(prefix="moderation-fetch-") as tmp:
            path = Path(tmp) / "video"
            self._download(uri, path)
            yield path

    def _local(self, uri: str) -> Path:
        parts = urllib.parse.urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise DeadLetter(errors.URI_NOT_ALLOWED, f"file URI names a remote host {parts.netloc!r}")
        path = Path(urllib.parse.unquote(parts.path))
        resolved = path.resolve()
        if self.file_roots and not any(resolved.is_relative_to(r) for r in self.file_roots):
            raise DeadLetter(errors.URI_NOT_ALLOWED, f"{path} is outside the allowed file roots")
        if not resolved.exists():
            raise DeadLetter(errors.VIDEO_NOT_FOUND, f"no such file: {path}")
        if not resolved.is_file() or not os.access(resolved, os.R_OK):
            raise DeadLetter(errors.VIDEO_UNREADABLE, f"not a readable file: {path}")
        size = resolved.stat().st_size
        if size > self.max_bytes:
            raise DeadLetter(errors.VIDEO_TOO_LARGE, f"{size} bytes is over the {self.max_bytes}-byte limit")
        return resolved

    def _download(self, uri: str, path: Path) -> None:
        deadline = time.monotonic() + self.timeout_s
        try:
            with urllib.request.urlopen(uri, timeout=self.timeout_s) as response, open(path, "wb") as out:
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise DeadLetter(errors.VIDEO_TOO_LARGE,
                                     f"Content-Length {declared} is over the {self.max_bytes}-byte limit")
                total = 0
                while chunk := response.read(_CHUNK):
                    total += len(chunk)
                    if total > self.max_bytes:
                        raise DeadLetter(errors.VIDEO_TOO_LARGE, f"over the {self.max_bytes}-byte limit")
                    if time.monotonic() > deadline:
                        raise DeadLetter(errors.FETCH_TIMEOUT, f"download took over {self.timeout_s}s")
                    out.write(chunk)
        except urllib.error.HTTPError as exc:
            reason = errors.VIDEO_NOT_FOUND if exc.code in (404, 410) else errors.FETCH_FAILED
            raise DeadLetter(reason, f"HTTP {exc.code} from {uri[:200]}") from None
        except (socket.timeout, TimeoutError):
            raise DeadLetter(errors.FETCH_TIMEOUT, f"no answer within {self.timeout_s}s") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (socket.timeout, TimeoutError)):
                raise DeadLetter(errors.FETCH_TIMEOUT, f"no answer within {self.timeout_s}s") from None
            raise DeadLetter(errors.FETCH_FAILED, f"{exc.reason}") from None
        except OSError as exc:
            raise DeadLetter(errors.FETCH_FAILED, str(exc)[:300]) from None


class DecordSampler:
    """Decodes ``count`` frames spread evenly over a video, as RGB uint8."""

    def __init__(self, threads: int = 0):
        self.threads = threads

    def sample(self, path: Path, count: int) -> SampledFrames:
        size = path.stat().st_size
        if size == 0:
            raise DeadLetter(errors.EMPTY_FILE, "the file is empty")
        with open(path, "rb") as stream:
            family = sniff(stream.read(512))
            if family == "iso-bmff" and iso_bmff_truncated(stream, size):
                raise DeadLetter(errors.VIDEO_TRUNCATED, "an MP4 box runs past the end of the file")
        try:
            reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=self.threads)
        except (RuntimeError, decord.DECORDError) as exc:
            reason = errors.NOT_A_VIDEO if family is None else errors.CORRUPT_VIDEO
            raise DeadLetter(reason, f"cannot open as video: {str(exc).splitlines()[0][:200]}") from None
        frame_count = len(reader)
        if frame_count == 0:
            raise DeadLetter(errors.NO_FRAMES, "the video has no frames")
        indices = sorted({int(i) for i in np.linspace(0, frame_count - 1, num=count).round()})
        try:
            frames = reader.get_batch(indices).asnumpy()
            timestamps = reader.get_frame_timestamp(indices)[:, 0]
        except (RuntimeError, decord.DECORDError) as exc:
            raise DeadLetter(errors.CORRUPT_VIDEO, f"decoding failed: {str(exc).splitlines()[0][:200]}") from None
        return SampledFrames(
            frames=frames, indices=tuple(indices),
            timestamps_s=tuple(max(0.0, float(t)) for t in timestamps),
            frame_count=frame_count, fps=float(reader.get_avg_fps()),
        )


