"""The consume loop: poll, process one event, publish its verdict or dead letter, commit.

Ordering is the delivery guarantee (at-least-once): the input offset is committed only
after Kafka has acknowledged the output record. A crash between the two re-processes the
event; nothing is lost. If Kafka does not acknowledge an output, the consumer seeks back
and the event is retried. Every event ends as exactly one output record, verdict or dead
letter; the worker never stops on bad input.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from kafka.structs import OffsetAndMetadata, TopicPartition

from . import errors
from .config import KafkaConfig
from .errors import DeadLetter
from .events import (SourcePosition, UploadEvent, Verdict, dead_letter_record,
                     parse_upload_event, verdict_record)
from .metrics import Health, WorkerMetrics
from .pipeline import Pipeline

log = logging.getLogger("worker.runner")


@dataclass(frozen=True)
class Output:
    """The one record an input event turns into."""

    topic: str
    key: bytes | None
    value: bytes
    verdict: Verdict | None = None
    dead_letter: DeadLetter | None = None
    event: UploadEvent | None = None


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Runner:
    def __init__(self, consumer: Any, producer: Any, pipeline: Pipeline, kafka: KafkaConfig,
                 worker_id: str, metrics: WorkerMetrics, health: Health,
                 now: Callable[[], datetime] = _utcnow):
        self.consumer = consumer
        self.producer = producer
        self.pipeline = pipeline
        self.kafka = kafka
        self.worker_id = worker_id
        self.metrics = metrics
        self.health = health
        self.now = now

    def handle(self, record: Any) -> Output:
        """Turn one consumed record into its output record. Never raises for bad input."""
        position = SourcePosition(record.topic, record.partition, record.offset)
        event = None
        try:
            event = parse_upload_event(record.value, self.kafka.max_event_bytes)
            verdict = self.pipeline.process(event)
            key, value = verdict_record(verdict, self.worker_id, self.now())
            return Output(self.kafka.verdict_topic, key, value, verdict=verdict, event=event)
        except DeadLetter as failure:
            return self._dead_letter(failure, record, position, event)
        except Exception as exc:  # a bug or an unforeseen input: keep the event, keep running
            log.exception("processing failed", extra=self._where(record, event))
            failure = DeadLetter(errors.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
            return self._dead_letter(failure, record, position, event)

    def _dead_letter(self, failure, record, position, event) -> Output:
        key, value = dead_letter_record(failure, record.value, record.key, position,
                                        self.worker_id, self.now(), event)
        return Output(self.kafka.dead_letter_topic, key, value, dead_letter=failure, event=event)

    def publish(self, output: Output) -> None:
        """Send and wait for Kafka's acknowledgement; raises if there is none."""
        started = time.perf_counter()
        self.producer.send(output.topic, key=output.key, value=output.value).get(
            timeout=self.kafka.publish_timeout_s)
        self.metrics.stage.labels("publish").observe(time.perf_counter() - started)

    def _account(self, output: Output, record: Any) -> None:
        where = self._where(record, output.event)
        if output.verdict is not None:
            verdict = output.verdict
            for stage in ("fetch", "decode", "detect_faces", "classify"):
                if stage in verdict.stage_seconds:
                    self.metrics.stage.labels(stage).observe(verdict.stage_seconds[stage])
            latency = (self.now() - verdict.event.uploaded_at).total_seconds()
            self.metrics.end_to_end.observe(max(0.0, latency))
            self.metrics.decisions.labels(verdict.decision).inc()
            self.metrics.faces.inc(verdict.face_count)
            log.info("verdict", extra={**where, "decision": verdict.decision,
                                       "reasons": list(verdict.reasons),
                                       "video_score": verdict.video_score,
                                       "face_count": verdict.face_count,
                                       "latency_s": round(latency, 3)})
        else:
            self.metrics.dead_letters.labels(output.dead_letter.reason).inc()
            log.warning("dead letter: %s", output.dead_letter.message,
                        extra={**where, "reason": output.dead_letter.reason})

    def _where(self, record: Any, event: UploadEvent | None) -> dict:
        where = {"topic": record.topic, "partition": record.partition, "offset": record.offset,
                 "worker_id": self.worker_id}
        if event is not None:
            where.update(event_id=event.event_id, video_id=event.video_id)
        return where

    def process_batch(self, batch: dict, stop: threading.Event | None = None) -> int:
        """Handle polled records in order; returns how many were committed.

        On stop, the records not yet started are rewound, so the next owner of the
        partition gets them; the one in flight is finished and committed first.
        """
        done = 0
        pending = [(tp, rec) for tp, records in batch.items() for rec in records]
        for i, (tp, record) in enumerate(pending):
            if stop is not None and stop.is_set():
                self._rewind(pending[i:])
                return done
            self.metrics.events.inc()
            self.metrics.in_flight.inc()
            try:
                output = self.handle(record)
                self.publish(output)
            except Exception:
                self.metrics.publish_failures.inc()
                log.exception("Kafka did not acknowledge the output; the event will be retried",
                              extra=self._where(record, None))
                self._rewind(pending[i:])
                return done
            finally:
                self.metrics.in_flight.dec()
            try:
                self.consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "", -1)})
            except Exception:
                # The partition moved to another worker (rebalance) before the commit; it
                # will process the event again and publish a second verdict with the same
                # key. At-least-once: a duplicate, never a loss.
                log.warning("offset commit failed after publishing", exc_info=True,
                            extra=self._where(record, output.event))
            self._account(output, record)
            done += 1
        return done

    def _rewind(self, unprocessed: list) -> None:
        first: dict[TopicPartition, int] = {}
        for tp, record in unprocessed:
            first.setdefault(tp, record.offset)
        for tp, offset in first.items():
            self.consumer.seek(tp, offset)

    def run(self, stop: threading.Event, retry_backoff_s: float = 1.0) -> None:
        """Consume until ``stop`` is set, then leave the group cleanly."""
        try:
            while not stop.is_set():
                try:
                    batch = self.consumer.poll(timeout_ms=self.kafka.poll_timeout_ms,
                                               max_records=self.kafka.max_poll_records)
                    self.health.set("kafka_reachable", True)
                except Exception:
                    self.health.set("kafka_reachable", False)
                    log.exception("polling Kafka failed")
                    stop.wait(retry_backoff_s)
                    continue
                self.health.set("partitions_assigned", bool(self.consumer.assignment()))
                expected = sum(len(v) for v in batch.values())
                if self.process_batch(batch, stop) < expected and not stop.is_set():
                    stop.wait(retry_backoff_s)
        finally:
            self.health.set("partitions_assigned", False)
            self.close()

    def close(self) -> None:
        try:
            self.producer.flush(timeout=self.kafka.publish_timeout_s)
        finally:
            self.producer.close(timeout=self.kafka.publish_timeout_s)
            self.consumer.close()
