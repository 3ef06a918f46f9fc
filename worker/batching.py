"""Dynamic batching across callers, the Triton way: flush at the maximum batch size or
after the maximum wait, whichever comes first.

Many videos are in flight on processing threads, each with a few dozen frames or faces:
too few to fill a device batch one video at a time. Each caller hands its items to the one
thread that owns the device stage and blocks; that thread starts a batch with the first
request, adds whatever else arrives until the batch is full or ``max_wait_s`` has passed
since the first request was taken, runs it, and hands each caller its own part back. A
request that would overflow a non-empty batch starts the next one; a request larger than
the maximum runs alone (the stage splits it into device batches itself).

The queue in front of the stage is bounded: callers block when it is full, which is the
backpressure that keeps the decoders from running ahead of the device. Pure threading, no
torch: the detector and classifier adapters (:mod:`worker.models.batching`) supply ``run``.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from contextlib import contextmanager
from typing import Callable, Generic, Iterator, Protocol, Sequence, TypeVar, runtime_checkable

Item = TypeVar("Item")
Out = TypeVar("Out")


class BatcherClosed(RuntimeError):
    """The stage was shut down before this request ran."""


@dataclass
class _Request(Generic[Item, Out]):
    item: Item
    size: int
    done: threading.Event = field(default_factory=threading.Event)
    result: Out | None = None
    error: BaseException | None = None


@dataclass(frozen=True)
class BatchStats:
    requests: int
    size: int
    waited_s: float   # from taking the first request to running the batch


class DynamicBatcher(Generic[Item, Out]):
    """``run(items)`` gets the items of one batch and returns one result per item."""

    def __init__(self, run: Callable[[list[Item]], Sequence[Out]], max_size: int, max_wait_s: float,
                 size_of: Callable[[Item], int] = lambda item: 1, max_queued: int = 64,
                 name: str = "batcher", on_batch: Callable[[BatchStats], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if max_size < 1 or max_wait_s < 0 or max_queued < 1:
            raise ValueError("max_size and max_queued must be at least 1, max_wait_s not negative")
        self._run_batch = run
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._size_of = size_of
        self._on_batch = on_batch
        self._clock = clock
        self._queue: queue.Queue[_Request | None] = queue.Queue(maxsize=max_queued)
        self._carry: _Request | None = None
        self._closed = False
        self.batches_run = 0          # for tests and the benchmark
        self.sizes: list[int] = []    # the last few batch sizes, newest last
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Item) -> Out:
        """Run ``item`` in a batch with whatever else arrives, and return its result."""
        if self._closed:
            raise BatcherClosed("the batcher is closed")
        request: _Request[Item, Out] = _Request(item, max(1, self._size_of(item)))
        self._queue.put(request)  # blocks while the stage is behind: backpressure
        while not request.done.wait(1.0):
            if not self._thread.is_alive() and not request.done.is_set():
                raise BatcherClosed("the batcher stopped before this request ran")
        if request.error is not None:
            raise request.error
        return request.result

    def queued(self) -> int:
        return self._queue.qsize()

    def close(self, timeout_s: float = 30.0) -> None:
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=timeout_s)

    def _next(self, timeout: float | None) -> _Request | None:
        if self._carry is not None:
            request, self._carry = self._carry, None
            return request
        return self._queue.get(timeout=timeout) if timeout is not None else self._queue.get()

    def _gather(self, first: _Request) -> tuple[list[_Request], bool, float]:
        batch, total = [first], first.size
        started = self._clock()
        deadline = started + self.max_wait_s
        while total < self.max_size:
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            try:
                request = self._next(remaining)
            except queue.Empty:
                break
            if request is None:
                return batch, True, self._clock() - started
            if total + request.size > self.max_size:
                self._carry = request  # full: it starts the next batch
                break
            batch.append(request)
            total += request.size
        return batch, False, self._clock() - started

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._next(None)
            if first is None:
                break
            batch, stopping, waited = self._gather(first)
            try:
                results = self._run_batch([r.item for r in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"the stage returned {len(results)} results for {len(batch)} requests")
                for request, result in zip(batch, results):
                    request.result = result
            except BaseException as exc:  # every caller in the batch gets the failure, none hangs
                for request in batch:
                    request.error = exc
            self.batches_run += 1
            self.sizes = (self.sizes + [sum(r.size for r in batch)])[-256:]
            for request in batch:
                request.done.set()
            if self._on_batch is not None:
                self._on_batch(BatchStats(len(batch), sum(r.size for r in batch), waited))
        self._fail_waiting()

    def _fail_waiting(self) -> None:
        """Requests that arrived after close: their callers get an error, never a hang."""
        pending = [self._carry] if self._carry is not None else []
        self._carry = None
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                break
            if request is not None:
                pending.append(request)
        for request in pending:
            request.error = BatcherClosed("the batcher was closed")
            request.done.set()


@dataclass
class WallTiming:
    seconds: float = 0.0


@contextmanager
def wall_timer() -> Iterator[WallTiming]:
    timing = WallTiming()
    started = time.perf_counter()
    yield timing
    timing.seconds = time.perf_counter() - started


@runtime_checkable
class WatchedStage(Protocol):
    """A device stage that reports each of its calls (the cross-video batchers)."""

    def watch(self, observe: Callable[[int, float], None]) -> None:
        """Call ``observe(size, seconds)`` after each device call."""
