"""The classifier's score of a known-content match, after the verdict instead of before it.

A bank match is a takedown with no model uncertainty, so its verdict must not wait for the
models. When a score is still wanted (``bank.score_matches``: evidence for audits, and a
check on the model against content people already judged), the verdict's own transaction
also copies the upload event, unchanged, to ``bank.score_topic``. The worker group consumes
that topic next to the uploads: each queued event is run through the models alone (no bank)
and becomes one ``match-score`` record (``schemas/v1/match-score``, a distinct CloudEvents
type) on the verdict topic, keyed by the video id like the verdict, in one transaction with
the queued event's offset. So the score follows exactly once, through crashes and
rebalances, on whichever worker has capacity, and a score that cannot be computed (the video
is gone by then) is a dead letter with its reason code, as for an upload.

Fetching and decoding happen a second time for the score: that is off the verdict's path,
and the alternative, holding the decoded frames until the models are free, would tie up
memory and the processing thread that the next upload needs.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from worker.core.events import (Applied, SourcePosition, Verdict, checked_json, envelope, latency_seconds,
                                output_id, parse_upload_event, round_score, utcnow, worker_source)

MATCH_SCORE_TYPE = "dev.moderation.match-score.v1"


def match_score_record(verdict: Verdict, worker_id: str, published_at: datetime,
                       position: SourcePosition) -> tuple[bytes, bytes]:
    """Key (the video id) and value of the match-score record of a models-only verdict."""
    model = None if verdict.model is None else {
        "name": verdict.model.name, "version": verdict.model.version,
        "checkpoint_sha256": verdict.model.checkpoint_sha256}
    document = envelope(MATCH_SCORE_TYPE, output_id(position, "match-score"), worker_source(worker_id),
                        published_at, {
        "source_event_id": verdict.event.event_id, "video_id": verdict.event.video_id,
        "video_score": round_score(verdict.video_score),
        "model_decision": verdict.decision, "model_reasons": list(verdict.reasons),
        "face_count": verdict.face_count, "frames_sampled": verdict.frames_sampled,
        "tracks": [{"track_id": t.track_id, "score": round_score(t.score),
                    "detections": len(t.detections)} for t in verdict.tracks],
        "model": model, "policy_version": verdict.policy_version,
        "latency_seconds": latency_seconds(verdict, published_at), "worker_id": worker_id,
    }, subject=verdict.event.video_id)
    return verdict.event.video_id.encode(), checked_json("match-score", document)


class MatchScoring:
    """The runner's side-topic handler of ``bank.score_topic``. ``pipeline``: the models
    without the bank (so that the queued upload is scored, not matched again)."""

    def __init__(self, topic: str, verdict_topic: str, pipeline: Any, worker_id: str,
                 max_event_bytes: int = 256 * 1024, now: Callable[[], datetime] = utcnow):
        if pipeline.bank is not None:
            raise ValueError("scoring a match needs the pipeline without the bank")
        self.topic = topic
        self.verdict_topic = verdict_topic
        self.pipeline = pipeline
        self.worker_id = worker_id
        self.max_event_bytes = max_event_bytes
        self.now = now

    def handle_record(self, record: Any) -> Applied:
        """Raises DeadLetter (the upload's own reasons) when the score cannot be computed."""
        event = parse_upload_event(record.value, self.max_event_bytes)
        verdict = self.pipeline.process(event)
        position = SourcePosition(record.topic, record.partition, record.offset)
        key, value = match_score_record(verdict, self.worker_id, self.now(), position)
        return Applied({"kind": "match score", "video_id": event.video_id, "event_id": event.event_id,
                        "video_score": verdict.video_score}, [(self.verdict_topic, key, value)])
