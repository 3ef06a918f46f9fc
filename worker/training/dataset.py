"""Real face crops from the platform's videos, and real/self-blended training pairs.

Decoding and face detection are the slow part of training and their result never changes,
so each video is decoded (:class:`worker.media.decoding.DecordSampler`) and searched for faces
with MTCNN (box + five landmarks) once; the crops are cached in an ``.npz`` per video,
keyed by the file's identity and the settings that shape the crops. Epochs then only
blend and resize.

A crop is the face box plus ``crop_margin`` on each side, exactly the window the worker
scores (:func:`worker.models.crops.expand_box`); it is resized by the worker's own
:func:`~worker.models.crops.face_crop` and normalised as
:class:`~worker.models.inference.FaceScorer` does, so training and serving see the same
pixels. The blend is made on the crop at frame resolution, before the resize.

Every random choice (which faces form a batch, each blend, each flip) derives from
``(seed, step)``, so a run resumed at step N sees the same data as one that never stopped.

In a process that also runs torch, import torch before this module (decord; see docs/runtime.md, "Pitfalls").
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from worker.core.dead_letters import DeadLetter
from worker.faces.mtcnn import MtcnnDetector, worker_mtcnn
from worker.media.decoding import DecordSampler
from worker.models.crops import expand_box, face_crop
from worker.models.inference import normalise
from worker.models.spec import Preprocessing
from worker.training.sbi import self_blend

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
CACHE_FORMAT = 1


class TrainingDataError(RuntimeError):
    """No usable faces: no videos, none decodable, or no face found in any of them."""


@dataclass(frozen=True)
class FaceCrop:
    image: np.ndarray       # (H, W, 3) uint8: box + margin, cut from the frame
    landmarks: np.ndarray   # (5, 2) float32, x, y in the crop's pixels
    video: str
    frame_index: int


@dataclass(frozen=True)
class DetectionSettings:
    frames_per_video: int = 16
    crop_margin: float = 1 / 3
    detector_scale: float = 1.0           # frames are downscaled by this before MTCNN
    detector_thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    min_face_size: int = 20
    min_confidence: float = 0.9


def find_videos(paths: Iterable[Path]) -> list[Path]:
    """Files as given, folders searched recursively for video suffixes; sorted, no repeats."""
    found: set[Path] = set()
    for path in map(Path, paths):
        if path.is_dir():
            found.update(p.resolve() for p in path.rglob("*")
                         if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        elif path.is_file():
            found.add(path.resolve())
        else:
            raise TrainingDataError(f"{path} is neither a video file nor a folder")
    return sorted(found)


class LandmarkDetector:
    """MTCNN boxes and five landmarks, with the worker's detector settings."""

    def __init__(self, settings: DetectionSettings, device: torch.device, batch_size: int = 16):
        self.settings = settings
        self.batch_size = batch_size
        self._mtcnn = worker_mtcnn(device, settings.min_face_size, settings.detector_thresholds)
        self._device = device

    def detect(self, frames: np.ndarray) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        """Per frame: (box x1 y1 x2 y2, landmarks (5, 2)) in frame pixels, confident ones only."""
        scale = self.settings.detector_scale
        found = []
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start:start + self.batch_size]
            if scale != 1.0:  # the worker's own downscale, so boxes match its detector's
                chunk = MtcnnDetector.downscale(chunk, scale)
            boxes, probs, points = self._mtcnn.detect(torch.from_numpy(chunk).to(self._device),
                                                      landmarks=True)
            for frame_boxes, frame_probs, frame_points in zip(boxes, probs, points):
                kept = []
                if frame_boxes is not None:
                    for box, prob, pts in zip(frame_boxes, frame_probs, frame_points):
                        if prob is not None and prob >= self.settings.min_confidence:
                            kept.append((np.asarray(box, np.float64) / scale,
                                         np.asarray(pts, np.float64) / scale))
                found.append(kept)
        return found


def _cache_key(video: Path, settings: DetectionSettings) -> str:
    stat = video.stat()
    identity = {"format": CACHE_FORMAT, "path": str(video), "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns, "settings": [settings.frames_per_video,
                settings.crop_margin, settings.detector_scale, list(settings.detector_thresholds),
                settings.min_face_size, settings.min_confidence]}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def video_faces(video: Path, settings: DetectionSettings, detector: LandmarkDetector,
                sampler: DecordSampler) -> list[FaceCrop]:
    """Decode, detect, cut: the face crops of one video (no cache)."""
    sampled = sampler.sample(video, settings.frames_per_video)
    frames = sampled.frames
    height, width = frames.shape[1:3]
    crops = []
    for frame, index, faces in zip(frames, sampled.indices, detector.detect(frames)):
        for box, points in faces:
            left, top, right, bottom = expand_box(box, settings.crop_margin, width, height)
            if right - left < 8 or bottom - top < 8:
                continue
            crops.append(FaceCrop(image=np.ascontiguousarray(frame[top:bottom, left:right]),
                                  landmarks=(points - [left, top]).astype(np.float32),
                                  video=str(video), frame_index=int(index)))
    return crops


def load_faces(videos: Sequence[Path], settings: DetectionSettings, cache_dir: Path,
               device: torch.device = torch.device("cpu")) -> tuple[list[FaceCrop], dict[str, str]]:
    """The face crops of all videos (cached), and the videos skipped with the reason why."""
    if not videos:
        raise TrainingDataError("no videos to train on")
    cache_dir.mkdir(parents=True, exist_ok=True)
    detector: LandmarkDetector | None = None
    sampler = DecordSampler()
    faces: list[FaceCrop] = []
    skipped: dict[str, str] = {}
    for video in videos:
        cached = cache_dir / f"{_cache_key(video, settings)}.npz"
        if cached.is_file():
            found = _read_cache(cached, video)
        else:
            detector = detector or LandmarkDetector(settings, device)
            try:
                found = video_faces(video, settings, detector, sampler)
            except DeadLetter as failure:
                skipped[str(video)] = f"{failure.reason}: {failure.message}"
                log.warning("skipping %s: %s", video, skipped[str(video)])
                continue
            _write_cache(cached, found)
        if not found:
            skipped[str(video)] = "no face found"
        faces.extend(found)
    if not faces:
        raise TrainingDataError(f"no face found in {len(videos)} video(s); skipped: {skipped}")
    return faces, skipped


def _write_cache(path: Path, crops: list[FaceCrop]) -> None:
    arrays = {f"crop_{i}": c.image for i, c in enumerate(crops)}
    arrays["landmarks"] = np.array([c.landmarks for c in crops], np.float32).reshape(-1, 5, 2)
    arrays["frame_indices"] = np.array([c.frame_index for c in crops], np.int64)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _read_cache(path: Path, video: Path) -> list[FaceCrop]:
    with np.load(path, allow_pickle=False) as data:
        return [FaceCrop(image=data[f"crop_{i}"], landmarks=data["landmarks"][i], video=str(video),
                         frame_index=int(index)) for i, index in enumerate(data["frame_indices"])]


class SelfBlendedPairs:
    """Batches of (real crop, 0) and (its self-blend, 1), as the backend's input tensors.

    ``preprocessing`` is the model file's: input size, mean and std (the margin was
    applied when the crops were cut). ``blend_pool`` = 0 gives every face a fresh blend
    each epoch; k > 0 cycles through k fixed blends per face (1 = a fixed set, for
    overfitting checks).
    """

    def __init__(self, faces: Sequence[FaceCrop], preprocessing: Preprocessing, seed: int,
                 blend_pool: int = 0):
        if not faces:
            raise TrainingDataError("no faces")
        self.faces = list(faces)
        self.preprocessing = preprocessing
        self._resize = replace(preprocessing, crop_margin=0.0)
        self.seed = seed
        self.blend_pool = blend_pool

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    def __len__(self) -> int:
        return len(self.faces)

    def indices(self, step: int, batch_size: int) -> list[tuple[int, int]]:
        """(epoch, face index) for the batch of ``step``: a seeded permutation per epoch."""
        picked = []
        n = len(self.faces)
        for position in range(step * batch_size, (step + 1) * batch_size):
            epoch, offset = divmod(position, n)
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
            picked.append((epoch, int(order[offset])))
        return picked

    def pair(self, index: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The real crop and its self-blend, as (S, S, 3) uint8 network inputs."""
        face = self.faces[index]
        variant = epoch % self.blend_pool if self.blend_pool > 0 else epoch
        rng = np.random.default_rng([self.seed, index, variant])
        fake = self_blend(face.image, face.landmarks, rng).image
        real = face.image
        if rng.random() < 0.5:
            real, fake = real[:, ::-1], fake[:, ::-1]
        return self.resize(real), self.resize(fake)

    def resize(self, crop: np.ndarray) -> np.ndarray:
        """A cut crop (box + margin) to the network's (S, S, 3) uint8 square, as served."""
        height, width = crop.shape[:2]
        return face_crop(np.ascontiguousarray(crop), (0, 0, width, height), self._resize)

    def inputs(self, crops: np.ndarray) -> torch.Tensor:
        """(N, S, S, 3) uint8 to the normalised (N, 3, S, S) float batch, as FaceScorer makes it."""
        faces = torch.from_numpy(np.ascontiguousarray(crops))
        return normalise(faces, self.preprocessing.mean, self.preprocessing.std).contiguous()

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(2B, 3, S, S) normalised inputs, real then fake for each face, and their labels."""
        crops, labels = [], []
        for epoch, index in self.indices(step, batch_size):
            crops += self.pair(index, epoch)
            labels += [0.0, 1.0]
        return self.inputs(np.stack(crops)), torch.tensor(labels)


class StepBatches(torch.utils.data.Dataset):
    """Step ``start + i``'s batch as item ``i``, so a DataLoader's worker processes can make
    the blends in parallel; each batch depends only on its step, so the order of the data
    does not depend on the number of workers."""

    def __init__(self, pairs: SelfBlendedPairs, batch_size: int, start: int, stop: int):
        self.pairs, self.batch_size, self.start, self.stop = pairs, batch_size, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pairs.batch(self.start + i, self.batch_size)


def step_batches(pairs: SelfBlendedPairs, batch_size: int, start: int, stop: int, workers: int = 0):
    """The batches of steps ``start`` .. ``stop - 1`` in order; ``workers`` > 0 makes them in
    that many processes, a few steps ahead of the training loop."""
    batches = StepBatches(pairs, batch_size, start, stop)
    if workers <= 0:
        return (batches[i] for i in range(len(batches)))
    return iter(torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers,
                                            prefetch_factor=2, persistent_workers=False))
