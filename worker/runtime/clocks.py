"""Whose clock an upload's latency is read on.

An upload event's ``uploaded_at`` is the producer's claim: a producer with a skewed clock,
or an event replayed from an old file, would put any number into a latency read from it.
The Kafka record's timestamp is the platform's own clock: the broker's (LogAppendTime) or
the producing client's (CreateTime), whichever the topic's ``message.timestamp.type`` keeps.
The latency histograms, and so the SLO and its alerts, run on the record's timestamp;
``uploaded_at`` is kept as the claim. A latency outside the sane window (more than
``clock_skew_s`` in the future, or older than ``latency_window_s``) is counted by clock in
``moderation_latency_out_of_window_total`` and never observed, so no clock can poison a
quantile.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from worker.config import WorkerConfig

RECORD_CLOCK = "kafka_record"
CLAIMED_CLOCK = "uploaded_at"
CLOCKS = (RECORD_CLOCK, CLAIMED_CLOCK)
CREATE_TIME, LOG_APPEND_TIME = 0, 1  # kafka-python's ConsumerRecord.timestamp_type


def record_time(record: object) -> datetime | None:
    """The record's Kafka timestamp, or None for a record that has none (the pre-0.10 format)."""
    millis = getattr(record, "timestamp", None)
    if millis is None or millis < 0:
        return None
    return datetime.fromtimestamp(millis / 1000, timezone.utc)


@dataclass(frozen=True)
class LatencyWindow:
    max_s: float = 86_400.0
    skew_s: float = 300.0

    @classmethod
    def of(cls, worker: WorkerConfig) -> "LatencyWindow":
        return cls(worker.latency_window_s, worker.clock_skew_s)

    def admit(self, start: datetime | None, end: datetime) -> float | None:
        """Seconds from ``start`` to ``end``, clamped at 0 within the skew allowed; None when
        there is no start or the value is outside the window."""
        if start is None:
            return None
        seconds = (end - start).total_seconds()
        if seconds < -self.skew_s or seconds > self.max_s:
            return None
        return max(0.0, seconds)
