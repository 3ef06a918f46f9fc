"""The consume loop: poll, hand events to processing threads, deliver each result, commit.

One thread owns the consumer and keeps polling, so group membership and heartbeats stay
alive however long a video takes: partitions with work waiting are paused, not starved
of polls. Up to ``worker.processing_threads`` videos run at once, several of them from one
partition (``worker.partition_window``); a partition's results still reach Kafka strictly
in offset order, through its reorder window (:mod:`worker.runtime.ordering`). Publishing and
committing happen here, on the poll thread, never on a thread that feeds the GPU. What a
record turns into is :mod:`worker.runtime.outputs`' business, and how its records and
offset reach Kafka (one transaction, or publish then commit) :mod:`worker.runtime.delivery`'s.
Every consumed record ends as exactly one output; the worker never stops on bad input.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from kafka import ConsumerRebalanceListener

from worker.config import KafkaConfig, WorkerConfig
from worker.metrics import Health, WorkerMetrics
from worker.runtime.accounting import Latencies, account, report_lag
from worker.runtime.clocks import LatencyWindow
from worker.runtime.delivery import Delivery, Fenced
from worker.runtime.ordering import Partitions, Slot
from worker.runtime.outputs import Outputs, where
from worker.runtime.threads import Job, ProcessingThreads

log = logging.getLogger("worker.runner")
LAG_INTERVAL_S = 5.0


class Runner:
    def __init__(self, consumer: Any, delivery: Delivery, outputs: Outputs, kafka: KafkaConfig,
                 worker: WorkerConfig, metrics: WorkerMetrics, health: Health,
                 clock: Callable[[], float] = time.monotonic, latencies: Latencies | None = None):
        """``outputs`` turns each record into its output (:mod:`worker.runtime.outputs`),
        with the side topics it consumes next to ``kafka.upload_topic``; ``latencies``
        observes each delivered verdict's (by default on ``worker``'s window)."""
        self.consumer = consumer
        self.delivery = delivery
        self.outputs = outputs
        self.kafka = kafka
        self.worker = worker
        self.metrics = metrics
        self.health = health
        self.clock = clock
        self.latencies = latencies or Latencies(metrics, LatencyWindow.of(worker))
        self._parts = Partitions(worker.partition_window)
        self._next_lag = 0.0
        self._turn = -1
        self.retry_backoff_s = 1.0

    def start(self) -> None:
        """Join the group and get the delivery ready (this fences an older instance)."""
        self.delivery.start()
        topics = [self.kafka.upload_topic, *self.outputs.side_topics]
        self.consumer.subscribe(topics, listener=_Listener(self))

    def run(self, stop: threading.Event, threads: Any = None) -> None:
        """Consume until ``stop`` is set, then shut down within ``worker.shutdown_deadline_s``.

        ``threads`` replaces the processing threads (tests pass ``fakes.InlineThreads``).
        """
        threads = threads or ProcessingThreads(self.worker.processing_threads, self.outputs.handle)
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
        busy = self._parts.busy()
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
                self._parts.buffer(tp, records)
                self.metrics.events.inc(len(records))
        if fetch:
            self._start_work(threads)
        self._set_paused(assignment, pause_all=not fetch)
        self._finish_work(threads)
        self._report_lag(assignment)

    def _start_work(self, threads: ProcessingThreads) -> None:
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
                self._parts.window(tp).add(record, Job(future, abandoned))
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

    def _finish_work(self, threads: ProcessingThreads) -> None:
        for tp, window in list(self._parts.in_flight.items()):
            for slot in window:
                if slot.done:
                    continue
                job: Job = slot.job
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
                    slot.result = self.outputs.timed_out(slot.record, self.worker.video_deadline_s)
            ready = window.ready(self.worker.max_outputs_per_commit)
            if ready and self.clock() >= ready[0].retry_at and self._deliver(tp, ready):
                window.delivered(ready)
                if not len(window):
                    del self._parts.in_flight[tp]
        self.metrics.in_flight.set(self._parts.count())

    def _deliver(self, tp: Any, slots: list[Slot]) -> bool:
        """The results of ``slots`` (consecutive offsets of ``tp``) and the offset after the
        last of them, in one transaction."""
        outputs = self.outputs.in_order([(slot.record, slot.result) for slot in slots])
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
                        extra=where(head.record, outputs[0].event, self.worker.id))
            return False
        self.metrics.stage.labels("publish").observe(time.perf_counter() - started)
        for slot, output in zip(slots, outputs):
            self.outputs.delivered(slot.record, output)
            account(output, slot.record, self.metrics, self.worker.id, self.outputs.now(),
                    self.latencies)
        return True

    def _drain(self, threads: ProcessingThreads) -> None:
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
            first, dropped = self._parts.forget(tp)
            if dropped:
                log.warning("partition revoked with %d event(s) in flight; dropping their results",
                            len(dropped), extra=where(dropped[0].record, None, self.worker.id))
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
        if assignment and self.clock() >= self._next_lag:
            self._next_lag = self.clock() + LAG_INTERVAL_S
            report_lag(self.consumer, self.kafka.upload_topic, assignment, self._parts.pending,
                       self.metrics)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, runner: Runner):
        self.runner = runner

    def on_partitions_revoked(self, revoked):
        self.runner.metrics.rebalances.labels("revoked").inc()
        self.runner.revoke(set(revoked))

    def on_partitions_assigned(self, assigned):
        self.runner.metrics.rebalances.labels("assigned").inc()
