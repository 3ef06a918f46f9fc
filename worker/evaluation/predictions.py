"""Per-video predictions of an evaluation run: an append-only JSON Lines file.

Scoring a benchmark takes hours, and a run can be killed at any moment. Each video's result
is appended and flushed to disk as soon as it exists, so a re-run skips what is done; the
file is also what the report and ``calibrate`` are computed from, so any figure can be
re-derived from it (by scikit-learn too). A run killed while writing leaves at most a torn
last line: it is ignored when read, and cut off before the next line is appended.

Lines are keyed by the video's path relative to the dataset root and by the model key (the
checkpoint hash and the scoring settings): predictions of another model or other settings
in the same file are kept but never mixed in.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

SCORED = "scored"        # faces found and scored
NO_FACES = "no_faces"    # decoded, but no face in the sampled frames: no score
FAILED = "failed"        # could not be fetched or decoded (a dead-letter reason)
STATUSES = (SCORED, NO_FACES, FAILED)


class PredictionsError(ValueError):
    """A predictions file that cannot be read back (not a torn last line: a bad line)."""


@dataclass(frozen=True)
class VideoPrediction:
    key: str                            # path relative to the dataset root
    label: int                          # 1 = fake, 0 = real
    model: str                          # the model key
    status: str
    video_score: float | None = None    # raw (uncalibrated) video score
    face_scores: tuple[float, ...] = ()  # every sampled face's raw score
    frames: tuple[int, ...] = ()        # the frame index of each face score
    tracks: int = 0
    group: str | None = None
    reason: str | None = None           # for FAILED: the dead-letter reason code
    message: str | None = None
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps({
            "path": self.key, "label": self.label, "group": self.group, "model": self.model,
            "status": self.status, "video_score": self.video_score,
            "face_scores": list(self.face_scores), "frames": list(self.frames),
            "tracks": self.tracks, "reason": self.reason, "message": self.message,
            "seconds": round(self.seconds, 4)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> "VideoPrediction":
        row = json.loads(line)
        if not isinstance(row, dict) or row.get("status") not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        prediction = cls(
            key=str(row["path"]), label=int(row["label"]), model=str(row["model"]),
            status=row["status"],
            video_score=None if row.get("video_score") is None else float(row["video_score"]),
            face_scores=tuple(float(v) for v in row.get("face_scores", ())),
            frames=tuple(int(v) for v in row.get("frames", ())), tracks=int(row.get("tracks", 0)),
            group=row.get("group"), reason=row.get("reason"), message=row.get("message"),
            seconds=float(row.get("seconds", 0.0)))
        if prediction.label not in (0, 1):
            raise ValueError("label must be 0 or 1")
        if prediction.status == SCORED and prediction.video_score is None:
            raise ValueError("a scored video needs a video_score")
        return prediction


@dataclass(frozen=True)
class ReadBack:
    predictions: tuple[VideoPrediction, ...]
    torn_last_line: bool   # the previous run was killed while writing its last line


def read_predictions(path: Path) -> ReadBack:
    """Every complete line; a bad last line without its newline is a torn write, anything
    else bad is an error naming the line."""
    path = Path(path)
    if not path.exists():
        return ReadBack((), False)
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    found: list[VideoPrediction] = []
    torn = False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            found.append(VideoPrediction.from_json(line))
        except (ValueError, KeyError, TypeError) as exc:
            if number == len(lines) and not text.endswith("\n"):
                torn = True
                continue
            raise PredictionsError(f"{path}:{number}: not a prediction line: {exc}") from None
    return ReadBack(tuple(found), torn)


def latest_by_key(predictions, model: str) -> dict[str, VideoPrediction]:
    """The last line per video for this model (a re-scored video's newest line wins)."""
    return {p.key: p for p in predictions if p.model == model}


class PredictionLog:
    """Appends one line per video, durable before the next video starts."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> ReadBack:
        return read_predictions(self.path)

    def append(self, prediction: VideoPrediction) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as stream:
            end = stream.seek(0, os.SEEK_END)
            if end > 0:
                stream.seek(end - 1)
                if stream.read(1) != b"\n":  # a torn last line: drop it, the video is redone
                    stream.seek(0)
                    stream.truncate(stream.read().rfind(b"\n") + 1)
            stream.write(prediction.to_json().encode("utf-8") + b"\n")
            stream.flush()
            os.fsync(stream.fileno())
