"""Model calls in progress, so that liveness sees one that never returns.

A GPU or CPU model call that hangs (a wedged driver, a kernel that never finishes, a
deadlock in a library) blocks its video and, through the shared device batches, every video
behind it, while the poll loop keeps turning and the other checks stay green. Every face
detection and classification call is timed here, from the moment a video asks for it until
it returns (a wait for a shared device batch included); ``/livez`` fails once the oldest has
been running longer than ``worker.device_call_deadline_s``, so the orchestrator restarts the
pod and the partitions' next owner redoes the uncommitted records.
"""
from __future__ import annotations

import itertools
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from worker.core.pipeline import Pipeline
from worker.core.tracks import Box


class DeviceCalls:
    """The model calls running now, by stage."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._running: dict[int, tuple[str, float]] = {}
        self._tokens = itertools.count()

    @contextmanager
    def call(self, stage: str) -> Iterator[None]:
        token = next(self._tokens)
        with self._lock:
            self._running[token] = (stage, self._clock())
        try:
            yield
        finally:
            with self._lock:
                del self._running[token]

    def oldest(self) -> tuple[str, float] | None:
        """The stage of the longest-running call and its seconds so far; None when idle."""
        with self._lock:
            if not self._running:
                return None
            stage, started = min(self._running.values(), key=lambda running: running[1])
        return stage, self._clock() - started

    def oldest_seconds(self) -> float:
        oldest = self.oldest()
        return 0.0 if oldest is None else oldest[1]


class _Timed:
    """A model port whose calls are timed; everything else is the port's own."""

    def __init__(self, port: Any, calls: DeviceCalls):
        self._port = port
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self._port, name)


class TimedDetector(_Timed):
    def detect(self, frames: np.ndarray) -> list[list[tuple[Box, float]]]:
        with self._calls.call("detect_faces"):
            return self._port.detect(frames)


class TimedClassifier(_Timed):
    def score(self, frames: np.ndarray, faces: Sequence[tuple[int, Box]]) -> Sequence[Sequence[float]]:
        with self._calls.call("classify"):
            return self._port.score(frames, faces)


def timed(pipeline: Pipeline, calls: DeviceCalls) -> Pipeline:
    """The same pipeline, its face detector's and classifier's calls timed by ``calls``."""
    classifier = None if pipeline.classifier is None else TimedClassifier(pipeline.classifier, calls)
    return pipeline.replace(detector=TimedDetector(pipeline.detector, calls), classifier=classifier)
