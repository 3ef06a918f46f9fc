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
from pathlib import Path
from typing import Iterable, Iterator

from worker.core.dead_letters import DeadLetter, internal_error
from worker.core.events import UploadEvent, Verdict, local_upload
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


def _run(pipeline: Pipeline, event: UploadEvent) -> StreamResult:
    started = time.monotonic()
    try:
        verdict, failure = pipeline.process(event), None
    except DeadLetter as exc:
        verdict, failure = None, exc
    except Exception as exc:  # as the runner does: an internal error, and go on
        verdict, failure = None, internal_error(exc)
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
            event = item if isinstance(item, UploadEvent) else local_upload(item, "stream")
            pending.append(pool.submit(_run, pipeline, event))
            while len(pending) >= threads + window or (pending and pending[0].done()):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
