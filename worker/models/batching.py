"""Face crops of several videos in one device batch.

With ``worker.processing_threads`` above one, several videos are in flight at once, each
with a few dozen faces: far too few to fill a GPU batch one video at a time. Each video's
thread builds its own crops (CPU work, in parallel), then hands them to the one thread that
owns the device, which runs whatever has arrived within a few milliseconds, up to the batch
size, as one batch, and hands each video its own scores back.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..tracks import Box
from .inference import FaceScorer


@dataclass
class _Request:
    crops: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


class CrossVideoBatcher:
    """The ``FaceClassifier`` port over a :class:`FaceScorer`, batching across callers."""

    def __init__(self, scorer: FaceScorer, max_batch: int | None = None, max_wait_s: float = 0.005):
        self.scorer = scorer
        self.info = scorer.info
        self.max_batch = max_batch or scorer.batch_size
        self.max_wait_s = max_wait_s
        self.batches_run = 0       # device calls, for tests and the benchmark
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="model-batcher", daemon=True)
        self._thread.start()

    def score(self, frames: np.ndarray, faces: Sequence[tuple[int, Box]]) -> list[list[float]]:
        request = _Request(self.scorer.crops(frames, faces))
        if len(request.crops) == 0:
            return [[] for _ in self.scorer.members]
        self._queue.put(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result.tolist()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        pending, total = [first], len(first.crops)
        deadline = time.monotonic() + self.max_wait_s
        while total < self.max_batch:
            try:
                request = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if request is None:
                return pending, True
            pending.append(request)
            total += len(request.crops)
        return pending, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            pending, stopping = self._gather(first)
            try:
                scores = self.scorer.forward(np.concatenate([r.crops for r in pending]))
                self.batches_run += 1
                start = 0
                for request in pending:
                    request.result = scores[:, start:start + len(request.crops)]
                    start += len(request.crops)
            except BaseException as exc:  # every waiting video gets the failure, none hangs
                for request in pending:
                    request.error = exc
            for request in pending:
                request.done.set()
