"""One upload event in, one verdict out: the stages in order, each timed.

The stages are ports (fetch, sample frames, detect faces, score faces) that the caller
passes in, so this module imports neither Kafka nor torch: unit tests drive it with the
in-memory fakes in :mod:`worker.testing.fakes`, and production wires decord, MTCNN and the
PyTorch classifier in :mod:`worker.app`.
"""
from __future__ import annotations

import time
from statistics import fmean
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from worker.core.aggregation import score_tracks
from worker.core.credentials import Credentials
from worker.core.dead_letters import NO_FRAMES, DeadLetter
from worker.core.events import BankCheck, ModelInfo, UploadEvent, Verdict
from worker.core.policy import Policy, decide, label, policy_version
from worker.core.tracks import Box, Detection, link_tracks


@dataclass(frozen=True)
class SampledFrames:
    """RGB frames (N, H, W, 3) uint8 with their indices and timestamps in the video.

    ``hash_frames`` are extra, smaller frames at about one a second from the same decoder,
    for the known-content fingerprint; empty when hashing is off.
    """

    frames: np.ndarray
    indices: tuple[int, ...]
    timestamps_s: tuple[float, ...]
    frame_count: int
    fps: float
    hash_frames: np.ndarray | None = None
    hash_indices: tuple[int, ...] = ()
    hash_timestamps_s: tuple[float, ...] = ()


class VideoFetcher(Protocol):
    def fetch(self, uri: str) -> AbstractContextManager[Path]:
        """A local path to the video, valid inside the context; raises DeadLetter."""


@dataclass(frozen=True)
class SampleLayout:
    """What a video's :class:`SampledFrames` will hold, known once its first frame is decoded:
    a decoder can announce it, then hand over the frames one at a time."""

    shape: tuple[int, int, int, int]  # (frames, height, width, 3), upright
    indices: tuple[int, ...]
    timestamps_s: tuple[float, ...]
    frame_count: int
    fps: float
    hash_shape: tuple[int, int, int, int] | None = None
    hash_indices: tuple[int, ...] = ()
    hash_timestamps_s: tuple[float, ...] = ()

    def sampled(self, frames: np.ndarray, hash_frames: np.ndarray | None) -> SampledFrames:
        return SampledFrames(frames=frames, indices=self.indices, timestamps_s=self.timestamps_s,
                             frame_count=self.frame_count, fps=self.fps, hash_frames=hash_frames,
                             hash_indices=self.hash_indices, hash_timestamps_s=self.hash_timestamps_s)


class FrameSampler(Protocol):
    def sample(self, path: Path, count: int) -> SampledFrames:
        """``count`` frames spread evenly over the video; raises DeadLetter."""


class FaceDetector(Protocol):
    def detect(self, frames: np.ndarray) -> list[list[tuple[Box, float]]]:
        """Per frame, the face boxes (x1, y1, x2, y2) in frame pixels and their confidence."""


class FaceClassifier(Protocol):
    """The detector model port (backends: :mod:`worker.models.inference`).

    ``info`` names the model and carries the pure parts of its model file the pipeline
    needs: the per-track aggregation and the calibration.
    """

    info: ModelInfo

    def score(self, frames: np.ndarray, faces: Sequence[tuple[int, Box]]) -> Sequence[Sequence[float]]:
        """Per ensemble member, the raw deepfake probability of each (frame position, box) face."""


class CredentialsReader(Protocol):
    def read(self, path: Path) -> Credentials:
        """What the file's C2PA Content Credentials say; never raises for the file's content
        (a store that cannot be read is a record in state ``unreadable``)."""


class KnownContentBank(Protocol):
    def check(self, frames: np.ndarray, frame_indices: Sequence[int],
              timestamps_s: Sequence[float]) -> BankCheck:
        """Fingerprint the hash frames and look them up in the hash bank."""


class Pipeline:
    def __init__(self, fetcher: VideoFetcher, sampler: FrameSampler, detector: FaceDetector,
                 classifier: FaceClassifier | None, policy: Policy, frames_per_video: int,
                 clock: Callable[[], float] = time.perf_counter,
                 bank: KnownContentBank | None = None, credentials: CredentialsReader | None = None):
        """``bank`` runs before the models; with a match, the models do not run: the verdict
        goes out at once, and a score, if wanted, follows (:mod:`worker.bank.scoring`).
        ``credentials`` reads the file's content credentials before it is decoded."""
        if frames_per_video < 1:
            raise ValueError("frames_per_video must be at least 1")
        self.bank = bank
        self.credentials = credentials
        self.fetcher = fetcher
        self.sampler = sampler
        self.detector = detector
        self.classifier = classifier
        self.policy = policy
        self.frames_per_video = frames_per_video
        self.clock = clock

    def replace(self, **ports) -> "Pipeline":
        """The same pipeline with the named ports swapped (``bank=``, ``detector=``...); every
        port not named is kept, so a wrapper never drops one it does not know about."""
        kept = dict(fetcher=self.fetcher, sampler=self.sampler, detector=self.detector,
                    classifier=self.classifier, policy=self.policy,
                    frames_per_video=self.frames_per_video, clock=self.clock, bank=self.bank,
                    credentials=self.credentials)
        unknown = set(ports) - set(kept)
        if unknown:
            raise TypeError(f"Pipeline has no port {', '.join(sorted(unknown))}")
        return Pipeline(**{**kept, **ports})

    def with_bank(self, bank: KnownContentBank | None) -> "Pipeline":
        """The same stages and models, with this hash bank in front of them."""
        return self.replace(bank=bank)

    def process(self, event: UploadEvent) -> Verdict:
        seconds: dict[str, float] = {}
        started = self.clock()
        mark = started

        def lap(stage: str) -> None:
            nonlocal mark
            now = self.clock()
            seconds[stage] = now - mark
            mark = now

        with self.fetcher.fetch(event.video_uri) as path:
            lap("fetch")
            video_bytes = path.stat().st_size
            credentials = None
            if self.credentials is not None:
                credentials = self.credentials.read(path)
                lap("credentials")
            sampled = self.sampler.sample(path, self.frames_per_video)
            lap("decode")
        if len(sampled.indices) == 0:
            raise DeadLetter(NO_FRAMES, "the video has no decodable frames")

        check = None
        if self.bank is not None and sampled.hash_frames is not None and len(sampled.hash_frames):
            check = self.bank.check(sampled.hash_frames, sampled.hash_indices, sampled.hash_timestamps_s)
            lap("hash_match")
        known = check.match if check is not None else None

        faces = []
        if known is None:
            per_frame = self.detector.detect(sampled.frames)
            lap("detect_faces")
            faces = [(pos, box, conf) for pos, found in enumerate(per_frame) for box, conf in found]

        members: list[tuple[float, ...]] = [()] * len(faces)
        if self.classifier is not None and faces:
            per_member = self.classifier.score(sampled.frames, [(p, b) for p, b, _ in faces])
            if not per_member or any(len(m) != len(faces) for m in per_member):
                raise ValueError("the classifier must score every face once per ensemble member")
            members = [tuple(float(m[i]) for m in per_member) for i in range(len(faces))]
            lap("classify")

        detections = [
            Detection(frame_index=sampled.indices[pos], timestamp_s=sampled.timestamps_s[pos],
                      box=tuple(float(c) for c in box), confidence=float(conf),
                      score=fmean(scores) if scores else None, member_scores=scores)
            for (pos, box, conf), scores in zip(faces, members)
        ]
        tracks = link_tracks(detections, sampled.indices)
        # The verdict names the model only when it ran: a bank match skips the models.
        model = self.classifier.info if self.classifier is not None and known is None else None
        calibration = None
        if model is not None:
            tracks = score_tracks(tracks, model.aggregation)
            calibration = model.calibration
        decision = decide(self.policy, tracks, model_loaded=model is not None, known=known,
                          calibration=calibration)
        needed, decision = label(event.declaration, credentials, decision)
        seconds["processing"] = self.clock() - started
        return Verdict(
            event=event, decision=decision.decision, reasons=decision.reasons,
            video_score=decision.video_score, tracks=tracks,
            frames_sampled=len(sampled.indices), model=model,
            policy_version=policy_version(self.policy, calibration), stage_seconds=seconds,
            video_bytes=video_bytes, raw_video_score=decision.raw_video_score,
            decisive_track_id=decision.track_id,
            bank=check, credentials=credentials, label=needed,
        )
