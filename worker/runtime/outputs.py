"""What one consumed record turns into: the records of its one transaction.

An upload becomes its verdict, plus whatever the verdict hooks add to the same transaction
(a takedown's bank entry, a queued follow-up: :mod:`worker.bank.takedowns`); a record of a
side topic becomes what its handler returns (reviewers' confirmations, follow-up scores);
anything that cannot go on becomes one dead-letter record with a reason code. This runs on
the processing threads and makes no Kafka call: the runner delivers what it returns. A new
kind of output is a hook or a handler passed in here, never a branch in the delivery loop.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Protocol, Sequence

from worker.config import KafkaConfig, WorkerConfig
from worker.core import dead_letters
from worker.core.dead_letters import DeadLetter, internal_error
from worker.core.events import (Applied, Record, SourcePosition, UploadEvent, Verdict,
                                dead_letter_record, parse_upload_event, utcnow, verdict_record)
from worker.core.pipeline import Pipeline
from worker.runtime.clocks import record_time
from worker.runtime.dedupe import RecentEvents, duplicate_of

log = logging.getLogger("worker.runtime")


class ConsumedRecord(Protocol):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int  # milliseconds since the epoch; -1 where the record has none
    timestamp_type: int  # 0 CreateTime (the producing client's clock), 1 LogAppendTime (the broker's)


class SideTopicHandler(Protocol):
    """A topic consumed next to the uploads, each record delivered like an upload."""

    topic: str

    def handle_record(self, record: ConsumedRecord) -> Applied:
        """Raises DeadLetter with the reason when the record cannot be applied."""


class VerdictHook(Protocol):
    def records(self, verdict: Verdict, record: ConsumedRecord) -> Sequence[Record]:
        """Records to publish in the verdict's own transaction (none: an empty sequence)."""


@dataclass(frozen=True)
class Output:
    """The records one input record turns into, and what they were, for the accounting."""

    records: tuple[Record, ...]
    verdict: Verdict | None = None
    dead_letter: DeadLetter | None = None
    event: UploadEvent | None = None
    applied: dict | None = None  # a side topic's record applied: the log's fields


def position_of(record: ConsumedRecord) -> SourcePosition:
    return SourcePosition(record.topic, record.partition, record.offset)


def where(record: ConsumedRecord, event: UploadEvent | None, worker_id: str) -> dict:
    """The log fields that place a record."""
    fields = {"topic": record.topic, "partition": record.partition, "offset": record.offset,
              "worker_id": worker_id}
    if event is not None:
        fields.update(event_id=event.event_id, video_id=event.video_id)
    return fields


class Outputs:
    """Consumed record -> :class:`Output`. Never raises for bad input."""

    def __init__(self, pipeline: Pipeline | None, kafka: KafkaConfig, worker: WorkerConfig,
                 hooks: Sequence[VerdictHook] = (), side_topics: Sequence[SideTopicHandler] = (),
                 on_start: Callable[[ConsumedRecord, UploadEvent, datetime], None] = lambda *started: None,
                 now: Callable[[], datetime] = utcnow):
        """``pipeline`` may be None for a worker that consumes side topics only; ``on_start``
        is told of each upload as it starts (record, event, time), for its queueing latency."""
        self.pipeline = pipeline
        self.verdict_topic = kafka.verdict_topic
        self.dead_letter_topic = kafka.dead_letter_topic
        self.worker_id = worker.id
        self.verdict_schema = worker.verdict_schema
        self.max_event_bytes = kafka.max_event_bytes
        self.recent = RecentEvents(worker.dedupe_window)
        self.hooks = list(hooks)
        self.side_topics = {handler.topic: handler for handler in side_topics}
        self.on_start = on_start
        self.now = now

    def handle(self, record: ConsumedRecord) -> Output:
        handler = self.side_topics.get(record.topic)
        event = None
        try:
            if handler is not None:
                fields, records = handler.handle_record(record)
                return Output(tuple(records), applied=fields)
            event = parse_upload_event(record.value, self.max_event_bytes)
            self.recent.check(event.event_id, position_of(record))
            self.on_start(record, event, self.now())
            verdict = self.pipeline.process(event)
            key, value = verdict_record(verdict, self.worker_id, self.now(), position_of(record),
                                        record_time(record), self.verdict_schema)
            extra = [r for hook in self.hooks for r in hook.records(verdict, record)]
            return Output(((self.verdict_topic, key, value), *extra), verdict=verdict, event=event)
        except DeadLetter as failure:
            return self.dead_letter(failure, record, event)
        except Exception as exc:  # a bug or an unforeseen input: keep the event, keep running
            log.exception("processing a %s record failed", record.topic,
                          extra=where(record, event, self.worker_id))
            return self.dead_letter(internal_error(exc), record, event)

    def dead_letter(self, failure: DeadLetter, record: ConsumedRecord,
                    event: UploadEvent | None = None) -> Output:
        key, value = dead_letter_record(failure, record.value, record.key, position_of(record),
                                        self.worker_id, self.now(), event)
        return Output(((self.dead_letter_topic, key, value),), dead_letter=failure, event=event)

    def timed_out(self, record: ConsumedRecord, deadline_s: float) -> Output:
        return self.dead_letter(DeadLetter(dead_letters.TIMEOUT, f"not done within {deadline_s}s"), record)

    def in_order(self, results: Sequence[tuple[ConsumedRecord, Output]]) -> list[Output]:
        """Results of consecutive records, in offset order, about to be delivered together: a
        re-sent event id becomes its duplicate dead letter. ``handle`` checks too, but two
        records with one event id can be in flight at once; here the earlier one always wins."""
        outputs, seen = [], {}
        for record, output in results:
            if output.event is not None and output.dead_letter is None:
                position = position_of(record)
                earlier = self.recent.earlier(output.event.event_id, position) or seen.get(
                    output.event.event_id)
                if earlier is not None:
                    output = self.dead_letter(duplicate_of(earlier), record, output.event)
                else:
                    seen[output.event.event_id] = position
            outputs.append(output)
        return outputs

    def delivered(self, record: ConsumedRecord, output: Output) -> None:
        if output.event is not None and output.dead_letter is None:
            self.recent.remember(output.event.event_id, position_of(record))
