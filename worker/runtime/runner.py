"""The consume loop: poll, hand events to processing threads, deliver each result, commit.

One thread owns the consumer and keeps polling, so group membership and heartbeats stay
alive however long a video takes: partitions with work waiting are paused, not starved
of polls. Up to ``worker.processing_threads`` videos run at once, several of them from one
partition (``worker.partition_window``); a partition's results still reach Kafka strictly
in offset order, through its reorder window (:mod:`worker.runtime.ordering`). Publishing and
committing happen here, on the poll thread, never on a thread that feeds the GPU. How
results and their offset reach Kafka (one transaction, or publish then commit) is
:mod:`worker.runtime.delivery`'s business. Every consumed record ends as exactly one output
record; the worker never stops on bad input.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from kafka import ConsumerRebalanceListener

from worker.core import dead_letters
from worker.config import KafkaConfig, WorkerConfig
from worker.runtime.dedupe import RecentEvents
from worker.runtime.delivery import Delivery, Fenced
from worker.core.dead_letters import DeadLetter
from worker.core.events import (SourcePosition, UploadEvent, Verdict, dead_letter_record,
                     parse_upload_event, verdict_record)
from worker.metrics import Health, WorkerMetrics
from worker.runtime.ordering import ReorderWindow, Slot
from worker.bank.entries import entry_record, takedown_entry
from worker.core.pipeline import Pipeline
from worker.core.policy import TAKEDOWN

log = logging.getLogger("worker.runtime.runner")
LAG_INTERVAL_S = 5.0


@dataclass(frozen=True)
class Output:
    """The one record an input event turns into."""

    topic: str
    key: bytes | None
    value: bytes | None  # None: a tombstone (a reviewer's confirmation deleting a bank entry)
    verdict: Verdict | None = None
    dead_letter: DeadLetter | None = None
    event: UploadEvent | None = None
    extra: tuple[tuple[str, bytes | None, bytes | None], ...] = ()  # e.g. the bank entry of a takedown
    applied: dict | None = None  # a side topic's record applied: what it was, for the log

    @property
    def records(self) -> list[tuple[str, bytes | None, bytes]]:
        return [(self.topic, self.key, self.value), *self.extra]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class _ProcessingThreads:
    """Daemon threads running jobs; a job past its deadline is abandoned and its thread
    replaced, so one hung video cannot take the worker's capacity."""

    def __init__(self, count: int, run: Callable[[Any], Any]):
        # The runner starts no more jobs than there are threads; the bound is a safety net.
        self._jobs: queue.Queue = queue.Queue(maxsize=2 * count)
        self._run = run
        for _ in range(count):
            self._spawn()

    def _spawn(self) -> None:
        threading.Thread(target=self._loop, name="processing", daemon=True).start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            record, future, abandoned = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._run(record))
            except BaseException as exc:
                future.set_exception(exc)
            if abandoned.is_set():
                return  # a replacement thread took this one's place

    def submit(self, record: Any) -> tuple[Future, threading.Event]:
        future: Future = Future()
        abandoned = threading.Event()
        self._jobs.put((record, future, abandoned))
        return future, abandoned

    def replace(self, abandoned: threading.Event) -> None:
        abandoned.set()
        self._spawn()

    def stop(self, count: int) -> None:
        for _ in range(count):
            try:
                self._jobs.put_nowait(None)
            except queue.Full:  # daemon threads: they end with the process
                return


@dataclass(frozen=True)
class _Job:
    future: Future
    abandoned: threading.Event


@dataclass
class _Partitions:
    """What the poll thread knows about each assigned partition."""

    buffered: dict[Any, deque] = field(default_factory=dict)
    in_flight: dict[Any, ReorderWindow] = field(default_factory=dict)
    paused: set = field(default_factory=set)

    def running(self) -> int:
        """Records on a processing thread: a finished job frees its thread at once."""
        return sum(not slot.done and not slot.job.future.done()
                   for window in self.in_flight.values() for slot in window)

    def count(self) -> int:
        return sum(len(window) for window in self.in_flight.values())


class Runner:
    def __init__(self, consumer: Any, delivery: Delivery, pipeline: Pipeline, kafka: KafkaConfig,
                 worker: WorkerConfig, metrics: WorkerMetrics, health: Health,
                 now: Callable[[], datetime] = _utcnow, clock: Callable[[], float] = time.monotonic,
                 bank_topic: str | None = None, side_topics: Sequence[Any] = (),
                 score_topic: str | None = None, densify_topic: str | None = None):
        """``bank_topic``: where the fingerprints of takedowns go; None to not add them.
        ``side_topics``: handlers (``topic``, ``handle_record(record) -> (log fields,
        records)``) of topics consumed with the uploads, each record delivered like an
        upload, e.g. reviewers' confirmations and follow-up scoring
        (:mod:`worker.bank.confirmations`, :mod:`worker.bank.scoring`). ``score_topic``:
        where a known-content match's upload event goes, in the verdict's transaction, to be
        scored after the verdict; None for no follow-up score. ``densify_topic``: where a
        takedown that added a bank entry queues its upload event, in the same transaction, for
        the entry to be fingerprinted again densely (:mod:`worker.bank.densify`)."""
        self.densify_topic = densify_topic
        self.bank_topic = bank_topic
        self.side_topics = {handler.topic: handler for handler in side_topics}
        self.score_topic = score_topic
        self.consumer = consumer
        self.delivery = delivery
        self.pipeline = pipeline
        self.kafka = kafka
        self.worker = worker
        self.worker_id = worker.id
        self.metrics = metrics
        self.health = health
        self.now = now
        self.clock = clock
        self.recent = RecentEvents(worker.dedupe_window)
        self._parts = _Partitions()
        self._next_lag = 0.0
        self._turn = -1
        self.retry_backoff_s = 1.0

    # --- one record -> one output (runs on a processing thread; no Kafka calls) ----------

    def handle(self, record: Any) -> Output:
        """Turn one consumed record into its output record. Never raises for bad input."""
        if record.topic in self.side_topics:
            return self._side_topic(self.side_topics[record.topic], record)
        position = SourcePosition(record.topic, record.partition, record.offset)
        event = None
        try:
            event = parse_upload_event(record.value, self.kafka.max_event_bytes)
            earlier = self.recent.earlier(event.event_id, position)
            if earlier is not None:
                raise DeadLetter(dead_letters.DUPLICATE_EVENT,
                                 f"event id already processed at {earlier.topic}/"
                                 f"{earlier.partition}/{earlier.offset}")
            self.metrics.queue_wait.observe(max(0.0, (self.now() - event.uploaded_at).total_seconds()))
            verdict = self.pipeline.process(event)
            key, value = verdict_record(verdict, self.worker_id, self.now(), position)
            return Output(self.kafka.verdict_topic, key, value, verdict=verdict, event=event,
                          extra=self._bank_entries(verdict, position, record.value)
                          + self._follow_up(verdict, record))
        except DeadLetter as failure:
            return self.dead_letter(failure, record, event)
        except Exception as exc:  # a bug or an unforeseen input: keep the event, keep running
            log.exception("processing failed", extra=self._where(record, event))
            return self.dead_letter(DeadLetter(dead_letters.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"),
                                    record, event)

    def _bank_entries(self, verdict: Verdict, position: SourcePosition, record_value: bytes) -> tuple:
        """A model's takedown adds the video's fingerprint to the bank, in the same
        transaction as the verdict, so every worker catches its re-uploads (and, with a
        densify topic, queues the upload event for a dense fingerprint of the entry)."""
        if (self.bank_topic is None or verdict.decision != TAKEDOWN or verdict.known_content
                or not verdict.fingerprint):
            return ()
        entry = takedown_entry(verdict.event.video_id, verdict.fingerprint, position,
                               self.worker_id, self.now(), verdict.fingerprint_full)
        records = ((self.bank_topic, *entry_record(entry)),)
        if self.densify_topic:
            records += ((self.densify_topic, verdict.event.video_id.encode(), record_value),)
        return records

    def _follow_up(self, verdict: Verdict, record: Any) -> tuple:
        """A known-content takedown goes out without the models; its upload event is queued,
        in the same transaction, for the score to follow (:mod:`worker.bank.scoring`)."""
        if self.score_topic is None or verdict.known_content is None:
            return ()
        return ((self.score_topic, verdict.event.video_id.encode(), record.value),)

    def _side_topic(self, handler: Any, record: Any) -> Output:
        """A record of a side topic: the records it turns into, or a dead letter."""
        try:
            fields, records = handler.handle_record(record)
            (topic, key, value), *extra = records
            return Output(topic, key, value, extra=tuple(extra), applied=fields)
        except DeadLetter as failure:
            return self.dead_letter(failure, record)
        except Exception as exc:
            log.exception("handling a %s record failed", record.topic, extra=self._where(record, None))
            return self.dead_letter(DeadLetter(dead_letters.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"),
                                    record)

    def dead_letter(self, failure: DeadLetter, record: Any, event: UploadEvent | None = None) -> Output:
        position = SourcePosition(record.topic, record.partition, record.offset)
        key, value = dead_letter_record(failure, record.value, record.key, position,
                                        self.worker_id, self.now(), event)
        return Output(self.kafka.dead_letter_topic, key, value, dead_letter=failure, event=event)

    # --- the poll thread ------------------------------------------------------------------

    def start(self) -> None:
        """Join the group and get the delivery ready (this fences an older instance)."""
        self.delivery.start()
        topics = [self.kafka.upload_topic, *self.side_topics]
        self.consumer.subscribe(topics, listener=_Listener(self))

    def run(self, stop: threading.Event, threads: Any = None) -> None:
        """Consume until ``stop`` is set, then shut down within ``worker.shutdown_deadline_s``.

        ``threads`` replaces the processing threads (tests pass ``fakes.InlineThreads``).
        """
        threads = threads or _ProcessingThreads(self.worker.processing_threads, self.handle)
        try:
            self.start()
            while not stop.is_set():
                self.step(threads)
            self._drain(threads)
        finally:
            threads.stop(self.worker.processing_threads)
            self.health.set("partitions_assigned", False)
            self.consumer.close()
            self.delivery.close(self.kafka.publish_timeout_s)

    def step(self, threads: Any, fetch: bool = True) -> None:
        """One turn of the poll loop: poll, start work, pause or resume, deliver results."""
        self.health.beat()
        # With work in flight or waiting, poll briefly: the paused partitions have nothing to
        # fetch, and a long poll would leave finished results waiting for delivery.
        busy = bool(self._parts.in_flight) or any(self._parts.buffered.values())
        try:
            batch = self.consumer.poll(timeout_ms=50 if busy else self.kafka.poll_timeout_ms,
                                       max_records=self.kafka.max_poll_records)
            self.health.set("kafka_reachable", True)
        except Exception:
            self.health.set("kafka_reachable", False)
            log.exception("polling Kafka failed")
            time.sleep(self.retry_backoff_s)
            return
        assignment = self.consumer.assignment()
        self.health.set("partitions_assigned", bool(assignment))
        self.metrics.assigned_partitions.set(len(assignment))
        for tp, records in batch.items():
            if tp in assignment:
                self._parts.buffered.setdefault(tp, deque()).extend(records)
                self.metrics.events.inc(len(records))
        if fetch:
            self._start_work(threads)
        self._set_paused(assignment, pause_all=not fetch)
        self._finish_work(threads)
        self._report_lag(assignment)

    def _window(self, tp: Any) -> ReorderWindow:
        window = self._parts.in_flight.get(tp)
        if window is None:
            window = self._parts.in_flight[tp] = ReorderWindow(self.worker.partition_window)
        return window

    def _start_work(self, threads: _ProcessingThreads) -> None:
        """Start buffered records while a processing thread is free: one per partition per
        round, round robin, so a backlog on one partition does not starve the others; a
        partition whose reorder window is full waits for its oldest record."""
        order = list(self._parts.buffered)
        self._turn = (self._turn + 1) % max(1, len(order))
        order = order[self._turn:] + order[:self._turn]
        running = self._parts.running()
        progress = True
        while progress and running < self.worker.processing_threads:
            progress = False
            for tp in order:
                buffered = self._parts.buffered[tp]
                if not buffered or (tp in self._parts.in_flight and self._parts.in_flight[tp].full):
                    continue
                if running >= self.worker.processing_threads:
                    break
                record = buffered.popleft()
                future, abandoned = threads.submit(record)
                self._window(tp).add(record, _Job(future, abandoned))
                running += 1
                progress = True
        self.metrics.in_flight.set(self._parts.count())
        self.metrics.buffered.set(sum(len(b) for b in self._parts.buffered.values()))

    def _set_paused(self, assignment: set, pause_all: bool = False) -> None:
        """Pause partitions with work buffered or in flight: polling goes on, fetching stops."""
        busy = set(assignment) if pause_all else {
            tp for tp in assignment if self._parts.in_flight.get(tp) or self._parts.buffered.get(tp)}
        if busy - self._parts.paused:
            self.consumer.pause(*(busy - self._parts.paused))
        if (self._parts.paused & set(assignment)) - busy:
            self.consumer.resume(*((self._parts.paused & set(assignment)) - busy))
        self._parts.paused = busy

    def _finish_work(self, threads: _ProcessingThreads) -> None:
        for tp, window in list(self._parts.in_flight.items()):
            for slot in window:
                if slot.done:
                    continue
                job: _Job = slot.job
                if job.future.done():
                    slot.result = job.future.result()
                    continue
                if slot.started is None:
                    if not job.future.running():
                        continue
                    slot.started = self.clock()  # the deadline counts from the thread's start
                if self.clock() - slot.started > self.worker.video_deadline_s:
                    threads.replace(job.abandoned)
                    self.metrics.deadline_exceeded.inc()
                    slot.result = self.dead_letter(DeadLetter(
                        dead_letters.TIMEOUT, f"not done within {self.worker.video_deadline_s}s"), slot.record)
            ready = window.ready(self.worker.max_outputs_per_commit)
            if ready and self.clock() >= ready[0].retry_at and self._deliver(tp, ready):
                window.delivered(ready)
                if not len(window):
                    del self._parts.in_flight[tp]
        self.metrics.in_flight.set(self._parts.count())

    def _deliver(self, tp: Any, slots: list[Slot]) -> bool:
        """The results of ``slots`` (consecutive offsets of ``tp``) and the offset after the
        last of them, in one transaction."""
        outputs = self._dedupe(slots)
        records = [r for output in outputs for r in output.records]
        last = slots[-1].record
        started = time.perf_counter()
        try:
            self.delivery.deliver(records, tp, last.offset + 1, self.consumer.group_metadata())
        except Fenced:
            raise
        except Exception:
            head = slots[0]
            head.attempts += 1
            head.retry_at = self.clock() + min(30.0, 0.5 * 2 ** min(head.attempts, 6))
            self.metrics.publish_failures.inc()
            log.warning("delivering %d result(s) failed (attempt %d); they will be retried",
                        len(slots), head.attempts, exc_info=True,
                        extra=self._where(head.record, outputs[0].event))
            return False
        self.metrics.stage.labels("publish").observe(time.perf_counter() - started)
        for slot, output in zip(slots, outputs):
            record = slot.record
            if output.event is not None and output.dead_letter is None:
                self.recent.remember(output.event.event_id,
                                     SourcePosition(record.topic, record.partition, record.offset))
            self._account(output, record)
        return True

    def _dedupe(self, slots: list[Slot]) -> list[Output]:
        """Results in offset order, a re-sent event id turned into its duplicate dead letter.

        ``handle`` checks too, but two records with one event id can be in flight at once;
        here, on the poll thread and in offset order, the earlier one always wins.
        """
        outputs, seen = [], {}
        for slot in slots:
            output, record = slot.result, slot.record
            position = SourcePosition(record.topic, record.partition, record.offset)
            if output.event is not None and output.dead_letter is None:
                earlier = self.recent.earlier(output.event.event_id, position) or seen.get(
                    output.event.event_id)
                if earlier is not None:
                    output = slot.result = self.dead_letter(DeadLetter(
                        dead_letters.DUPLICATE_EVENT, f"event id already processed at {earlier.topic}/"
                        f"{earlier.partition}/{earlier.offset}"), record, output.event)
                else:
                    seen[output.event.event_id] = position
            outputs.append(output)
        return outputs

    def _drain(self, threads: _ProcessingThreads) -> None:
        """Stop fetching, finish and deliver what is in flight until the deadline, then leave."""
        deadline = self.clock() + self.worker.shutdown_deadline_s
        self._parts.buffered.clear()  # not started: the next owner of the partition gets them
        while self._parts.in_flight and self.clock() < deadline:
            self.step(threads, fetch=False)
        if self._parts.in_flight:
            log.warning("shutdown deadline reached with %d event(s) in flight; they were not "
                        "committed and will be processed by the next owner", self._parts.count())
            self._parts.in_flight.clear()

    def revoke(self, revoked: set) -> None:
        """Partitions are being taken away: forget their work, and rewind them.

        kafka-python keeps a partition's position and pause flag when the rebalance hands it
        straight back, so the partition is sought back to its first undelivered record (the
        oldest of its reorder window, else of its buffer) and resumed; if it does move away,
        the next owner starts from the committed offset. Results finished but waiting behind
        an unfinished record are dropped with it: they were never committed.
        """
        for tp in revoked:
            buffered = self._parts.buffered.pop(tp, None) or ()
            window = self._parts.in_flight.pop(tp, None)
            first = window.first_offset() if window is not None else None
            if first is None and buffered:
                first = buffered[0].offset
            if window is not None and len(window):
                log.warning("partition revoked with %d event(s) in flight; dropping their results",
                            len(window), extra=self._where(next(iter(window)).record, None))
            try:
                if first is not None:
                    self.consumer.seek(tp, first)
                if tp in self._parts.paused:
                    self.consumer.resume(tp)
            except Exception:  # already gone from the assignment: nothing to keep consistent
                log.debug("could not rewind a revoked partition", exc_info=True)
            self._parts.paused.discard(tp)
            try:
                self.metrics.lag.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass
        self.metrics.in_flight.set(self._parts.count())

    def _report_lag(self, assignment: set) -> None:
        if not assignment or self.clock() < self._next_lag:
            return
        self._next_lag = self.clock() + LAG_INTERVAL_S
        try:
            partitions = self.consumer.partitions_for_topic(self.kafka.upload_topic)
            if partitions:
                self.metrics.topic_partitions.labels(self.kafka.upload_topic).set(len(partitions))
            ends = self.consumer.end_offsets(list(assignment))
            for tp in assignment:
                pending = len(self._parts.buffered.get(tp, ())) + len(self._parts.in_flight.get(tp, ()))
                lag = max(0, ends[tp] - self.consumer.position(tp) + pending)
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)
        except Exception:
            log.debug("lag measurement failed", exc_info=True)

    # --- accounting -----------------------------------------------------------------------

    def _account(self, output: Output, record: Any) -> None:
        where = self._where(record, output.event)
        if output.applied is not None:
            log.info("%s record applied", output.applied.get("kind", "side-topic"),
                     extra={**where, **output.applied, "records": len(output.records)})
        elif output.verdict is not None:
            verdict = output.verdict
            for stage in ("fetch", "decode", "hash_match", "detect_faces", "classify"):
                if stage in verdict.stage_seconds:
                    self.metrics.stage.labels(stage).observe(verdict.stage_seconds[stage])
            latency = (self.now() - verdict.event.uploaded_at).total_seconds()
            self.metrics.end_to_end.observe(max(0.0, latency))
            self.metrics.decisions.labels(verdict.decision).inc()
            self.metrics.faces.inc(verdict.face_count)
            self.metrics.fetched_bytes.inc(verdict.video_bytes)
            self.metrics.frames_decoded.inc(verdict.frames_sampled)
            self.metrics.batch_size.labels("detect_faces").observe(verdict.frames_sampled)
            if "classify" in verdict.stage_seconds:
                self.metrics.batch_size.labels("classify").observe(verdict.face_count)
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


class _Listener(ConsumerRebalanceListener):
    def __init__(self, runner: Runner):
        self.runner = runner

    def on_partitions_revoked(self, revoked):
        self.runner.metrics.rebalances.labels("revoked").inc()
        self.runner.revoke(set(revoked))

    def on_partitions_assigned(self, assigned):
        self.runner.metrics.rebalances.labels("assigned").inc()
