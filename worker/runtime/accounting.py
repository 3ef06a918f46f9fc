"""What a delivered output tells the metrics and the log: one place, after delivery, so
that nothing is counted for an output that a failed transaction took back."""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Callable

from worker.metrics import WorkerMetrics
from worker.runtime.outputs import ConsumedRecord, Output, where

log = logging.getLogger("worker.runner")
# the pipeline's stages that verdicts time (the runner times "publish" itself)
VERDICT_STAGES = ("fetch", "decode", "hash_match", "detect_faces", "classify")


def account(output: Output, record: ConsumedRecord, metrics: WorkerMetrics, worker_id: str,
            now: datetime) -> None:
    fields = where(record, output.event, worker_id)
    if output.applied is not None:
        log.info("%s record applied", output.applied.get("kind", "side-topic"),
                 extra={**fields, **output.applied, "records": len(output.records)})
    elif output.verdict is not None:
        verdict = output.verdict
        for stage in VERDICT_STAGES:
            if stage in verdict.stage_seconds:
                metrics.stage.labels(stage).observe(verdict.stage_seconds[stage])
        latency = (now - verdict.event.uploaded_at).total_seconds()
        metrics.end_to_end.observe(max(0.0, latency))
        metrics.decisions.labels(verdict.decision).inc()
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
                                   "latency_s": round(latency, 3)})
    else:
        metrics.dead_letters.labels(output.dead_letter.reason).inc()
        log.warning("dead letter: %s", output.dead_letter.message,
                    extra={**fields, "reason": output.dead_letter.reason})


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
