"""What a delivered output tells the metrics and the log: one place, after delivery, so
that nothing is counted for an output that a failed transaction took back."""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Callable

from worker.core.events import UploadEvent, Verdict
from worker.metrics import WorkerMetrics
from worker.runtime.clocks import CLAIMED_CLOCK, RECORD_CLOCK, LatencyWindow, record_time
from worker.runtime.outputs import ConsumedRecord, Output, where

log = logging.getLogger("worker.runner")
# the pipeline's stages that verdicts time (the runner times "publish" itself)
VERDICT_STAGES = ("fetch", "credentials", "decode", "hash_match", "detect_faces", "classify")


class Latencies:
    """An upload's latencies, observed on the record's clock and on the producer's claim,
    each only when its start lies within the window (else counted by clock)."""

    def __init__(self, metrics: WorkerMetrics, window: LatencyWindow):
        self.metrics = metrics
        self.window = window

    def observe(self, histogram: Any, clock: str, start: datetime | None, end: datetime) -> None:
        seconds = self.window.admit(start, end)
        if seconds is None:
            self.metrics.latency_out_of_window.labels(clock).inc()
        else:
            histogram.observe(seconds)

    def started(self, record: ConsumedRecord, event: UploadEvent, now: datetime) -> None:
        start = record_time(record)
        seconds = self.window.admit(start, now)
        if seconds is not None:  # out of the window: counted once, when the verdict is delivered
            self.metrics.queue_wait.observe(seconds)

    def delivered(self, record: ConsumedRecord, verdict: Verdict, now: datetime) -> None:
        self.observe(self.metrics.end_to_end, RECORD_CLOCK, record_time(record), now)
        self.observe(self.metrics.claimed_end_to_end, CLAIMED_CLOCK, verdict.event.uploaded_at, now)


def account(output: Output, record: ConsumedRecord, metrics: WorkerMetrics, worker_id: str,
            now: datetime, latencies: Latencies) -> None:
    fields = where(record, output.event, worker_id)
    if output.applied is not None:
        if output.applied.get("kind") == "legal order":
            within = "true" if output.applied["within_deadline"] else "false"
            metrics.orders.labels(output.applied["status"], within).inc()
            metrics.order_completion.observe(output.applied["elapsed_seconds"])
        log.info("%s record applied", output.applied.get("kind", "side-topic"),
                 extra={**fields, **output.applied, "records": len(output.records)})
    elif output.verdict is not None:
        verdict = output.verdict
        for stage in VERDICT_STAGES:
            if stage in verdict.stage_seconds:
                metrics.stage.labels(stage).observe(verdict.stage_seconds[stage])
        latencies.delivered(record, verdict, now)
        metrics.decisions.labels(verdict.decision).inc()
        if verdict.credentials is not None:
            metrics.credentials.labels(verdict.credentials.state).inc()
        if verdict.label is not None:
            metrics.labels_decided.labels(verdict.label.status, verdict.label.kind or "none").inc()
        metrics.faces.inc(verdict.face_count)
        metrics.fetched_bytes.inc(verdict.video_bytes)
        metrics.frames_decoded.inc(verdict.frames_sampled)
        metrics.batch_size.labels("detect_faces").observe(verdict.frames_sampled)
        if "classify" in verdict.stage_seconds:
            metrics.batch_size.labels("classify").observe(verdict.face_count)
        log.info("verdict", extra={**fields, "decision": verdict.decision,
                                   "reasons": list(verdict.reasons),
                                   "video_score": verdict.video_score,
                                   "face_count": verdict.face_count,
                                   "latency_s": _seconds(record_time(record), now),
                                   "claimed_latency_s": _seconds(verdict.event.uploaded_at, now)})
    else:
        metrics.dead_letters.labels(output.dead_letter.reason).inc()
        log.warning("dead letter: %s", output.dead_letter.message,
                    extra={**fields, "reason": output.dead_letter.reason})


def _seconds(start: datetime | None, end: datetime) -> float | None:
    return None if start is None else round((end - start).total_seconds(), 3)


def report_lag(consumer: Any, upload_topic: str, assignment: set, pending: Callable[[Any], int],
               metrics: WorkerMetrics) -> None:
    """Each assigned partition's lag, counting records fetched but not yet delivered."""
    try:
        partitions = consumer.partitions_for_topic(upload_topic)
        if partitions:
            metrics.topic_partitions.labels(upload_topic).set(len(partitions))
        ends = consumer.end_offsets(list(assignment))
        for tp in assignment:
            lag = max(0, ends[tp] - consumer.position(tp) + pending(tp))
            metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)
    except Exception:
        log.debug("lag measurement failed", exc_info=True)
