"""In-order delivery of out-of-order work: the reorder window of one partition.

Several records of one partition are processed at once (a short video behind a long one
finishes first), but a partition's offset commit says "everything before this offset is
done", so results must reach Kafka strictly in offset order. Each partition keeps its
started records in a window, oldest first; a finished record waits until every record
before it has been delivered, and then leaves with them, in one transaction.

Pure bookkeeping (no Kafka, no threads): the runner owns the window and asks it what is
ready; the delivery guarantee itself is :mod:`worker.runtime.delivery`'s business.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, Iterator, Sequence, TypeVar

Result = TypeVar("Result")


@dataclass
class Slot(Generic[Result]):
    """One started record and, once it is done, its result."""

    record: Any                 # has .offset
    job: Any = None             # whatever the runner tracks for the running work
    result: Result | None = None
    started: float | None = None
    retry_at: float = 0.0
    attempts: int = 0

    @property
    def offset(self) -> int:
        return self.record.offset

    @property
    def done(self) -> bool:
        return self.result is not None


class ReorderWindow(Generic[Result]):
    """At most ``capacity`` records of one partition between start and delivery."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("a reorder window holds at least one record")
        self.capacity = capacity
        self._slots: deque[Slot[Result]] = deque()

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[Slot[Result]]:
        return iter(self._slots)

    @property
    def full(self) -> bool:
        return len(self._slots) >= self.capacity

    def add(self, record: Any, job: Any = None) -> Slot[Result]:
        """A record starts; records must start in offset order."""
        if self.full:
            raise OverflowError(f"the reorder window holds {self.capacity} records at most")
        if self._slots and record.offset <= self._slots[-1].offset:
            raise ValueError(f"offset {record.offset} started after {self._slots[-1].offset}")
        slot: Slot[Result] = Slot(record, job)
        self._slots.append(slot)
        return slot

    def ready(self, limit: int | None = None) -> list[Slot[Result]]:
        """The finished records at the head of the window, in offset order, that can be
        delivered now: none while the oldest record is still running."""
        ready = []
        for slot in self._slots:
            if not slot.done or (limit is not None and len(ready) >= limit):
                break
            ready.append(slot)
        return ready

    def delivered(self, slots: list[Slot[Result]]) -> None:
        """``slots`` (the head of the window, as :meth:`ready` gave them) reached Kafka."""
        for slot in slots:
            if not self._slots or self._slots[0] is not slot:
                raise ValueError("only the head of the window can be delivered")
            self._slots.popleft()

    def first_offset(self) -> int | None:
        """Where to rewind to so that no record of the window is lost."""
        return self._slots[0].offset if self._slots else None

    def clear(self) -> list[Slot[Result]]:
        slots = list(self._slots)
        self._slots.clear()
        return slots


@dataclass
class Partitions:
    """What the poll thread knows about each assigned partition: records fetched but not
    started, the reorder window of those in flight, and which partitions it paused."""

    window_size: int
    buffered: dict[Any, deque] = field(default_factory=dict)
    in_flight: dict[Any, ReorderWindow] = field(default_factory=dict)
    paused: set = field(default_factory=set)

    def buffer(self, tp: Any, records: Sequence[Any]) -> None:
        self.buffered.setdefault(tp, deque()).extend(records)

    def window(self, tp: Any) -> ReorderWindow:
        window = self.in_flight.get(tp)
        if window is None:
            window = self.in_flight[tp] = ReorderWindow(self.window_size)
        return window

    def busy(self) -> bool:
        return bool(self.in_flight) or any(self.buffered.values())

    def running(self) -> int:
        """Records on a processing thread: a finished job frees its thread at once."""
        return sum(not slot.done and not slot.job.future.done()
                   for window in self.in_flight.values() for slot in window)

    def count(self) -> int:
        return sum(len(window) for window in self.in_flight.values())

    def pending(self, tp: Any) -> int:
        """Records fetched from ``tp`` and not yet delivered."""
        return len(self.buffered.get(tp, ())) + len(self.in_flight.get(tp, ()))

    def forget(self, tp: Any) -> tuple[int | None, list[Slot]]:
        """Drop ``tp``'s work: its first undelivered offset (of its reorder window, else of
        its buffer) and the slots dropped from its window."""
        buffered = self.buffered.pop(tp, None) or ()
        window = self.in_flight.pop(tp, None)
        first = window.first_offset() if window is not None else None
        if first is None and buffered:
            first = buffered[0].offset
        return first, list(window) if window is not None else []
