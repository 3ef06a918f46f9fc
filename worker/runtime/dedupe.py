"""Recently seen upload event ids, so a re-sent event is processed once.

Bounded (least recently seen ids are forgotten) and per worker process: a duplicate that
arrives after its original has left the window, or on another worker, is processed again.
A redelivery of the *same* record (same topic, partition and offset, after a crash or an
aborted transaction) is not a duplicate: it is the retry of that event.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

from worker.core import dead_letters
from worker.core.dead_letters import DeadLetter
from worker.core.events import SourcePosition


def duplicate_of(earlier: SourcePosition) -> DeadLetter:
    return DeadLetter(dead_letters.DUPLICATE_EVENT, f"event id already processed at {earlier.topic}/"
                                                    f"{earlier.partition}/{earlier.offset}")


class RecentEvents:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._seen: OrderedDict[str, SourcePosition] = OrderedDict()
        self._lock = threading.Lock()

    def earlier(self, event_id: str, position: SourcePosition) -> SourcePosition | None:
        """Where this event id was already processed, if that was another record."""
        with self._lock:
            first = self._seen.get(event_id)
        return first if first is not None and first != position else None

    def check(self, event_id: str, position: SourcePosition) -> None:
        """Raises the duplicate's dead letter if this event id was processed at another record."""
        earlier = self.earlier(event_id, position)
        if earlier is not None:
            raise duplicate_of(earlier)

    def remember(self, event_id: str, position: SourcePosition) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._seen.setdefault(event_id, position)
            self._seen.move_to_end(event_id)
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
