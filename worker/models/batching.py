"""Face crops of several videos in one device batch.

With ``worker.processing_threads`` above one, several videos are in flight at once, each
with a few dozen faces: far too few to fill a GPU batch one video at a time. Each video's
thread builds its own crops (CPU work, in parallel), then hands them to the one thread that
owns the device (:class:`worker.batching.DynamicBatcher`), which runs whatever has arrived
within ``model.max_wait_ms``, up to the batch size, as one batch, and hands each video its
own scores back.
"""
from __future__ import annotations

from typing import Callable, ContextManager, Sequence

import numpy as np

from worker.batching import BatchStats, DynamicBatcher
from worker.core.tracks import Box
from worker.models.inference import FaceScorer
from worker.models.timing import StageTimer


class CrossVideoBatcher:
    """The ``FaceClassifier`` port over a :class:`FaceScorer`, batching across callers."""

    def __init__(self, scorer: FaceScorer, max_batch: int | None = None, max_wait_s: float = 0.005,
                 max_queued: int = 64, on_batch: Callable[[BatchStats], None] | None = None,
                 timer: Callable[[], ContextManager] | None = None,
                 observe: Callable[[int, float], None] | None = None):
        """``timer`` measures each device call (:class:`worker.models.timing.StageTimer`);
        ``observe(faces, seconds)`` gets each call's size and time (more: :meth:`watch`)."""
        self.scorer = scorer
        self._timer = timer or StageTimer(scorer.device).measure
        self._observers: list[Callable[[int, float], None]] = [observe] if observe else []
        self.info = scorer.info
        self.max_batch = max_batch or scorer.batch_size
        self.max_wait_s = max_wait_s
        self._batcher: DynamicBatcher = DynamicBatcher(
            self._run, self.max_batch, max_wait_s, size_of=len, max_queued=max_queued,
            name="model-batcher", on_batch=on_batch)

    @property
    def batches_run(self) -> int:
        """Device calls, for tests and the benchmark."""
        return self._batcher.batches_run

    def watch(self, observe: Callable[[int, float], None]) -> None:
        """Also call ``observe(size, seconds)`` after each device call."""
        self._observers.append(observe)

    @property
    def batcher(self) -> DynamicBatcher:
        return self._batcher

    def score(self, frames: np.ndarray, faces: Sequence[tuple[int, Box]]) -> list[list[float]]:
        crops = self.scorer.crops(frames, faces)
        if len(crops) == 0:
            return [[] for _ in self.scorer.members]
        return self._batcher.submit(crops).tolist()

    def close(self) -> None:
        self._batcher.close()

    def _run(self, requests: list[np.ndarray]) -> list[np.ndarray]:
        crops = requests[0] if len(requests) == 1 else np.concatenate(requests)
        with self._timer() as timing:
            scores = self.scorer.forward(crops)
        for observe in self._observers:
            observe(len(crops), timing.seconds)
        parts, start = [], 0
        for crops in requests:
            parts.append(scores[:, start:start + len(crops)])
            start += len(crops)
        return parts
