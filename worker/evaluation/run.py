"""Score every video of a labelled dataset once, resumably: the evaluation's loop.

The detector is a port (:class:`VideoScorer`): production adapts the worker's own pipeline
(:class:`PipelineScorer`), so the figures describe exactly what the worker would decide on,
and unit tests pass the in-memory fake from :mod:`worker.testing.fakes`. A video that cannot be
fetched or decoded is a prediction with status ``failed`` and its dead-letter reason, never
the end of the run.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from tqdm import tqdm

from worker.core.dead_letters import DeadLetter
from worker.evaluation.datasets import Dataset
from worker.evaluation.predictions import FAILED, NO_FACES, SCORED, PredictionLog, VideoPrediction, latest_by_key

PREDICTIONS_FILE = "predictions.jsonl"


@dataclass(frozen=True)
class ScoredVideo:
    video_score: float | None          # raw; None when no face was found
    face_scores: tuple[float, ...]
    frames: tuple[int, ...]            # frame index of each face score
    tracks: int


class VideoScorer(Protocol):
    model_key: str                     # names the weights and the scoring settings
    model: Mapping[str, Any]           # name, version, checkpoint hash: for the report

    def score(self, path: Path) -> ScoredVideo:
        """Score one local video; raises DeadLetter when it cannot be fetched or decoded."""


def model_key(checkpoint_sha256s: Sequence[str], settings: Mapping[str, Any]) -> str:
    """``<sha256>[,<sha256>...]+<digest>``: the checkpoint hashes (an ensemble has several)
    and a short digest of the other settings that change raw scores."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    return f"{','.join(checkpoint_sha256s)}+{digest[:12]}"


def key_checkpoints(key: str) -> tuple[str, ...]:
    """The checkpoint hashes a model key names."""
    return tuple(key.split("+", 1)[0].split(","))


class PipelineScorer:
    """The worker's pipeline (fetch, decode, MTCNN, classifier, tracks) on local files.

    The video score is the one the pipeline's policy decides on, before any calibration
    (the verdict's ``raw_video_score``); the key names every checkpoint of an ensemble.
    """

    def __init__(self, pipeline, settings: Mapping[str, Any]):
        from worker.core.events import local_upload  # jsonschema: only when used

        if pipeline.classifier is None:
            raise ValueError("evaluation needs a model: set model.config to its model file")
        self.pipeline = pipeline
        info = pipeline.classifier.info
        self.model = {"name": info.name, "version": info.version, "backend": info.backend,
                      "checkpoint_sha256s": list(info.all_sha256s), "settings": dict(settings)}
        self.model_key = model_key(info.all_sha256s, settings)
        self._event = lambda path: local_upload(path, "evaluation")

    def score(self, path: Path) -> ScoredVideo:
        verdict = self.pipeline.process(self._event(Path(path)))
        # The model's own (raw) score: calibrations are fitted on raw scores, and the verdict's
        # video_score is the calibrated one when the model file has a calibration.
        raw = verdict.raw_video_score
        faces = [(d.frame_index, d.score) for t in verdict.tracks for d in t.detections
                 if d.score is not None]
        faces.sort(key=lambda f: f[0])
        return ScoredVideo(video_score=raw, face_scores=tuple(s for _, s in faces),
                           frames=tuple(f for f, _ in faces), tracks=len(verdict.tracks))


@dataclass(frozen=True)
class RunSummary:
    predictions: dict[str, VideoPrediction]   # this dataset's videos, by key
    scored_now: int                           # videos scored by this call (the rest resumed)
    torn_last_line: bool


def evaluate(dataset: Dataset, scorer: VideoScorer, out_dir: Path, progress: bool = True) -> RunSummary:
    """Score the dataset's videos not yet in ``out_dir/predictions.jsonl`` for this model."""
    log = PredictionLog(Path(out_dir) / PREDICTIONS_FILE)
    previous = log.read()
    done = latest_by_key(previous.predictions, scorer.model_key)
    wanted = {v.key for v in dataset.videos}
    results = {k: p for k, p in done.items() if k in wanted}
    todo = [v for v in dataset.videos if v.key not in done]
    scored_now = 0
    bar = tqdm(todo, total=len(dataset.videos), initial=len(dataset.videos) - len(todo),
               unit="video", desc="evaluating", disable=not progress, dynamic_ncols=True)
    for video in bar:
        started = time.perf_counter()
        common = {"key": video.key, "label": video.label, "group": video.group, "model": scorer.model_key}
        try:
            scored = scorer.score(video.path)
        except DeadLetter as failure:
            prediction = VideoPrediction(status=FAILED, reason=failure.reason, message=failure.message[:500],
                                         seconds=time.perf_counter() - started, **common)
        else:
            prediction = VideoPrediction(
                status=SCORED if scored.video_score is not None else NO_FACES,
                video_score=scored.video_score, face_scores=scored.face_scores, frames=scored.frames,
                tracks=scored.tracks, seconds=time.perf_counter() - started, **common)
        log.append(prediction)
        results[video.key] = prediction
        scored_now += 1
    bar.close()
    return RunSummary(results, scored_now, previous.torn_last_line)
