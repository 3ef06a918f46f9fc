"""Frames of several videos in one face-detector call.

With several videos in flight on a GPU, each video's few sampled frames are far too few to
fill the detector; the one thread that owns the detector (:class:`worker.batching.DynamicBatcher`)
takes whatever frames have arrived within ``faces.max_wait_ms`` and runs them together.
"""
from __future__ import annotations

from typing import Callable, ContextManager

import numpy as np

from worker.batching import BatchStats, DynamicBatcher, wall_timer


class CrossVideoDetector:
    """The ``FaceDetector`` port over a detector, batching frames of several videos.

    Frames of one size go through the detector together (``max_batch`` frames at most per
    flush); videos of other sizes in the same flush get their own call. Each video gets its
    own per-frame results back, in order.
    """

    def __init__(self, detector, max_batch: int, max_wait_s: float, max_queued: int = 64,
                 on_batch: Callable[[BatchStats], None] | None = None,
                 timer: Callable[[], ContextManager] | None = None,
                 observe: Callable[[int, float], None] | None = None):
        """``timer`` measures each device call (CUDA events on a GPU: :mod:`worker.models.timing`);
        ``observe(frames, seconds)`` gets each call's size and time (more: :meth:`watch`)."""
        self.detector = detector
        self._timer = timer or wall_timer
        self._observers: list[Callable[[int, float], None]] = [observe] if observe else []
        self._batcher: DynamicBatcher = DynamicBatcher(
            self._run, max_batch, max_wait_s, size_of=len, max_queued=max_queued,
            name="face-batcher", on_batch=on_batch)

    def watch(self, observe: Callable[[int, float], None]) -> None:
        """Also call ``observe(size, seconds)`` after each device call."""
        self._observers.append(observe)

    @property
    def batcher(self) -> DynamicBatcher:
        return self._batcher

    def detect(self, frames: np.ndarray) -> list:
        if len(frames) == 0:
            return []
        return self._batcher.submit(frames)

    def close(self) -> None:
        self._batcher.close()

    def _run(self, videos: list[np.ndarray]) -> list[list]:
        results: list[list | None] = [None] * len(videos)
        by_shape: dict[tuple, list[int]] = {}
        for i, frames in enumerate(videos):
            by_shape.setdefault(tuple(frames.shape[1:]), []).append(i)
        for members in by_shape.values():
            stacked = videos[members[0]] if len(members) == 1 else np.concatenate(
                [videos[i] for i in members])
            with self._timer() as timing:
                found = self.detector.detect(stacked)
            for observe in self._observers:
                observe(len(stacked), timing.seconds)
            start = 0
            for i in members:
                results[i] = list(found[start:start + len(videos[i])])
                start += len(videos[i])
        return results
