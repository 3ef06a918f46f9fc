"""The worker's processing without Kafka: upload events (or video paths) in, verdicts out.

The benchmark and scripts drive exactly the stages the worker runs (the same
:class:`~worker.core.pipeline.Pipeline`, built by :func:`worker.app.build_pipeline` with its
cross-video batchers), with the same concurrency: ``threads`` videos in flight, results in
input order through a bounded reorder window, so memory stays bounded however long the
input. No offsets and no transactions: delivery is the runner's business.
"""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from worker.core import dead_letters
from worker.core.dead_letters import DeadLetter
from worker.core.events import UploadEvent, Verdict
from worker.core.pipeline import Pipeline


@dataclass(frozen=True)
class StreamResult:
    """One input's outcome: a verdict or the dead letter the worker would publish."""

    event: UploadEvent
    verdict: Verdict | None
    dead_letter: DeadLetter | None
    started_s: float      # monotonic clock, when its processing started
    finished_s: float     # ... and when it ended

    @property
    def latency_s(self) -> float:
        return self.finished_s - self.started_s


def event_for_path(path: Path | str, video_id: str | None = None) -> UploadEvent:
    """An upload event for a local file, as the uploader would send it (``file://``)."""
    path = Path(path).resolve()
    name = video_id or path.stem
    return UploadEvent(event_id=f"local-{name}-{time.monotonic_ns()}", source="urn:moderation:stream",
                       video_id=name, uploader="stream", video_uri=path.as_uri(),
                       uploaded_at=datetime.now(timezone.utc))


def _run(pipeline: Pipeline, event: UploadEvent) -> StreamResult:
    started = time.monotonic()
    try:
        verdict, failure = pipeline.process(event), None
    except DeadLetter as exc:
        verdict, failure = None, exc
    except Exception as exc:  # as the runner does: an internal error, and go on
        verdict, failure = None, DeadLetter(dead_letters.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
    return StreamResult(event, verdict, failure, started, time.monotonic())


def process_stream(pipeline: Pipeline, events: Iterable[UploadEvent | Path | str],
                   threads: int = 1, window: int = 16) -> Iterator[StreamResult]:
    """Process ``events`` with ``threads`` videos in flight; results in input order.

    At most ``threads + window`` inputs are taken from ``events`` ahead of the oldest
    unfinished one (``window`` as ``worker.partition_window``): the input is consumed
    lazily, so a generator of a million paths costs no memory up front.
    """
    if threads < 1 or window < 0:
        raise ValueError("threads must be at least 1 and window not negative")
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stream") as pool:
        for item in events:
            event = item if isinstance(item, UploadEvent) else event_for_path(item)
            pending.append(pool.submit(_run, pipeline, event))
            while len(pending) >= threads + window or (pending and pending[0].done()):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
