"""Sampling frames with decord, within limits: pixels, duration, and display rotation.

In a process that also runs torch, import torch before this module (see docs/runtime.md,
"Pitfalls"). The worker runs it in a sandboxed child process (:mod:`worker.media.sandbox`), which
imports no torch at all.
"""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import decord
import numpy as np
from PIL import Image

from worker.core import dead_letters
from worker.core.dead_letters import DeadLetter
from worker.core.pipeline import SampledFrames, SampleLayout
from worker.media.container import (IDENTITY_MATRIX, iso_bmff_truncated, mp4_track_handlers,
                        mp4_video_sample_count, mp4_video_track, mp4_without_tracks, sniff)
from worker.media.limits import DecodeLimits
from worker.media.sampling import choose_frames

decord.logging.set_level(decord.logging.QUIET)


class DecordSampler:
    """Decodes ``count`` frames spread evenly over a video, as RGB uint8, upright.

    With ``frame_slack`` above 0, each sampled frame may move by that share of the spacing
    between sampled frames to a keyframe or a hash frame, else to the cheapest frame within
    reach (:func:`worker.media.sampling.choose_frames`); 0 takes the DFDC winner's frames exactly.

    :meth:`stream` hands the frames over one at a time, so that a caller that passes them on
    (the sandboxed decoder child) never holds a whole sample; :meth:`sample` collects them.
    """

    def __init__(self, limits: DecodeLimits | None = None, **changes):
        """``limits``, with any of its fields changed by keyword (``frame_slack=0.5``)."""
        self.limits = replace(limits or DecodeLimits(), **changes)

    def sample(self, path: Path, count: int) -> SampledFrames:
        with self.stream(path, count) as stream:
            layout = stream.layout
            frames = np.empty(layout.shape, np.uint8)
            hashes = np.empty(layout.hash_shape, np.uint8) if layout.hash_shape else None
            filled = {FULL: 0, HASH: 0}
            for kind, frame in stream:
                (frames if kind == FULL else hashes)[filled[kind]] = frame
                filled[kind] += 1
            return layout.sampled(frames, hashes)

    @contextmanager
    def stream(self, path: Path, count: int) -> Iterator["FrameStream"]:
        """The video's :class:`FrameStream`, valid inside the context; raises DeadLetter,
        before the layout is known (the file, its size, its first frame) or while the frames
        are iterated (a frame that does not decode)."""
        size = path.stat().st_size
        if size == 0:
            raise DeadLetter(dead_letters.EMPTY_FILE, "the file is empty")
        track = None
        with open(path, "rb") as stream:
            family = sniff(stream.read(512))
            if family == "iso-bmff":
                if iso_bmff_truncated(stream, size):
                    raise DeadLetter(dead_letters.VIDEO_TRUNCATED, "an MP4 box runs past the end of the file")
                track = mp4_video_track(stream, size)
                if track is not None:
                    self._check_pixels(track.width, track.height)
        if track is not None and track.rotation:
            # decord mangles rotated video (wrong buffer sizes, squashed frames), so decode
            # a copy whose display matrix is reset, then rotate the frames here.
            with tempfile.TemporaryDirectory(prefix="moderation-unrotated-") as tmp:
                unrotated = Path(tmp) / "video.mp4"
                shutil.copyfile(path, unrotated)
                with open(unrotated, "r+b") as stream:
                    stream.seek(track.matrix_offset)
                    stream.write(IDENTITY_MATRIX)
                yield self._stream(unrotated, family, count, track.rotation)
        else:
            yield self._stream(path, family, count, 0)

    def _stream(self, path: Path, family: str | None, count: int, rotation: int) -> "FrameStream":
        reader = self._open(path, family)
        frame_count = len(reader)
        if frame_count == 0:
            raise DeadLetter(dead_letters.NO_FRAMES, "the video has no frames")
        fps = float(reader.get_avg_fps())
        duration = float(reader.get_frame_timestamp([frame_count - 1])[0, 1])
        if duration > self.limits.max_duration_s:
            raise DeadLetter(dead_letters.VIDEO_TOO_LONG,
                             f"{duration:.0f} s is over the {self.limits.max_duration_s:.0f} s limit")
        # Spread evenly from the first to the last frame, truncated to int (the DFDC winner's
        # rule, so its checkpoints see the frames they were published with), unless
        # frame_slack lets them move to frames that are cheaper to decode.
        hash_indices = self._hash_indices(frame_count, duration)
        cheap = [*self._keyframes(reader), *hash_indices] if self.limits.frame_slack else ()
        indices = choose_frames(frame_count, count, self.limits.frame_slack, cheap)
        wanted = sorted(set(indices) | set(hash_indices))
        with _decode_errors():
            timestamps = reader.get_frame_timestamp(indices)[:, 0]
            hash_times = reader.get_frame_timestamp(hash_indices)[:, 0] if hash_indices else ()
            # The first frame is decoded alone and its size checked against max_pixels before
            # anything else is decoded or allocated (only MP4 headers say the size earlier).
            first = reader.get_batch(wanted[:1]).asnumpy()
        self._check_pixels(first.shape[2], first.shape[1])
        height, width = (first.shape[2], first.shape[1]) if rotation in (90, 270) else first.shape[1:3]
        layout = SampleLayout(
            shape=(len(indices), height, width, 3), indices=tuple(indices),
            timestamps_s=tuple(max(0.0, float(t)) for t in timestamps),
            frame_count=frame_count, fps=fps,
            hash_shape=(len(hash_indices), *_shrunk_size(height, width, self.limits.hash_max_side), 3)
            if hash_indices else None,
            hash_indices=tuple(hash_indices), hash_timestamps_s=tuple(max(0.0, float(t)) for t in hash_times))
        return FrameStream(layout, self.limits.hash_max_side, _decoded(reader, wanted, first, rotation))

    @staticmethod
    def _keyframes(reader) -> list[int]:
        """The keyframes' indices, from the container's index (no decoding); none when the
        container does not say, which leaves the sampled frames at their cheapest in reach."""
        try:
            return [int(i) for i in reader.get_key_indices()]
        except (RuntimeError, decord.DECORDError):
            return []

    def _hash_indices(self, frame_count: int, duration: float) -> list[int]:
        """About ``hash_rate_hz`` frames a second, at least ``hash_min_frames`` (a clip of a
        second or two still gets enough frames for the bank's clip rule), at most
        ``hash_max_frames``, and never a frame twice."""
        if self.limits.hash_rate_hz <= 0:
            return []
        wanted = max(1, self.limits.hash_min_frames, round(duration * self.limits.hash_rate_hz))
        wanted = int(min(self.limits.hash_max_frames, frame_count, wanted))
        return sorted({int(i) for i in np.linspace(0, frame_count - 1, num=wanted).round()})

    def _open(self, path: Path, family: str | None):
        try:
            return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=self.limits.threads)
        except (RuntimeError, decord.DECORDError) as exc:
            message = _first_line(exc)
            if family is None:
                raise DeadLetter(dead_letters.NOT_A_VIDEO, f"not a video container: {message}") from None
            if family == "iso-bmff":
                with open(path, "rb") as stream:
                    handlers = mp4_track_handlers(stream, path.stat().st_size)
                    samples = mp4_video_sample_count(stream, path.stat().st_size)
                    no_tracks = mp4_without_tracks(stream, path.stat().st_size)
                if handlers and b"vide" not in handlers:
                    kinds = ", ".join(h.decode("latin-1") for h in handlers)
                    raise DeadLetter(dead_letters.NOT_A_VIDEO, f"an MP4 without a video track ({kinds})") from None
                if samples == 0 or no_tracks:
                    raise DeadLetter(dead_letters.NO_FRAMES, "the MP4 has no video frames") from None
            raise DeadLetter(dead_letters.CORRUPT_VIDEO, f"cannot open as video: {message}") from None

    def _check_pixels(self, width: int, height: int) -> None:
        if width * height > self.limits.max_pixels:
            raise DeadLetter(dead_letters.VIDEO_DIMENSIONS_TOO_LARGE,
                             f"{width}x{height} is over the {self.limits.max_pixels}-pixel limit")


def _upright(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Stored sideways, shown upright: rotate so faces are upright for the detector."""
    if not rotation:
        return frames
    return np.ascontiguousarray(np.rot90(frames, k=-rotation // 90, axes=(1, 2)))


FULL, HASH = "frame", "hash"


class FrameStream:
    """One video's frames, in ONE forward pass over the union of the sampled frames and the
    hash frames: decord's ``get_batch`` on increasing indices seeks to the last keyframe
    before each target when one lies in between and decodes forward from there, so a second
    pass would decode the keyframe runs again.

    Iterating yields ``(FULL, frame)`` for each sampled frame (full resolution) and
    ``(HASH, frame)`` for each hash frame (downscaled as it is decoded), in the order of
    :attr:`layout`'s indices of each kind. A frame is valid until the next one is asked for;
    keep a copy. Raises DeadLetter (corrupt_video) for a frame that does not decode."""

    def __init__(self, layout: SampleLayout, hash_max_side: int,
                 decoded: Iterator[tuple[int, np.ndarray]]):
        self.layout = layout
        self._hash_max_side = hash_max_side
        self._decoded = decoded

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        sampled, hashed = set(self.layout.indices), set(self.layout.hash_indices)
        with _decode_errors():
            for index, frame in self._decoded:
                if index in sampled:
                    yield FULL, frame
                if index in hashed:
                    yield HASH, _shrink(frame, self._hash_max_side)


def _decoded(reader, wanted: list[int], first: np.ndarray,
             rotation: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, upright frame)`` for each of ``wanted`` (increasing), ``first`` being the
    first one, already decoded.

    One frame per ``get_batch`` call: decord's decoding thread runs ahead of a batch call
    and keeps each frame it decoded, to RGB, until asked for it, so larger batches cost
    memory (a 1080p decode peaked at 140 MiB one frame at a time, 460 MiB eight at a time,
    490 MiB 32 at a time) and saved no time (docs/benchmarks.md, "The decoder child's
    memory")."""
    yield wanted[0], _upright(first, rotation)[0]
    del first
    for index in wanted[1:]:
        yield index, _upright(reader.get_batch([index]).asnumpy(), rotation)[0]


@contextmanager
def _decode_errors() -> Iterator[None]:
    try:
        yield
    except (RuntimeError, decord.DECORDError) as exc:
        raise DeadLetter(dead_letters.CORRUPT_VIDEO, f"decoding failed: {_first_line(exc)}") from None


def _shrunk_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) of a frame scaled to ``max_side`` on its longest side, never up."""
    scale = max_side / max(height, width)
    if scale >= 1:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def _shrink(frame: np.ndarray, max_side: int) -> np.ndarray:
    height, width = _shrunk_size(*frame.shape[:2], max_side)
    if (height, width) == frame.shape[:2]:
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BOX))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [""])[0][:300]
