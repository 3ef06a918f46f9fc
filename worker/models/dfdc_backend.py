"""The DFDC winner as a worker backend: its network, its face detector, its crop.

The network (:mod:`worker.models.dfdc`) and the winner's preprocessing rules
(:mod:`worker.models.dfdc_preprocess`) are restated in their own modules; this one plugs them
into the worker's ports. Those rules are fixed (half-size MTCNN with thresholds 0.7/0.8/0.8,
integer boxes, a third of the box as margin, isotropic resize to 380 and a zero pad), so a
model file with this backend must state them; only ``frames_per_video`` may differ (fewer
frames cost accuracy, but make CPU tests affordable).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from worker.core.tracks import Box
from worker.models.backend import FunctionBackend
from worker.models.dfdc import DeepFakeClassifier, load_winner_checkpoint, winner_mtcnn
from worker.models.dfdc_preprocess import (DETECTOR_SCALE, DETECTOR_THRESHOLDS, INPUT_SIZE, crop_window,
                              detect_faces, face_input, face_limit)
from worker.models.spec import ModelFileError, ModelSpec, Preprocessing

def check_rules(spec: ModelSpec) -> None:
    """Refuse a model file whose preprocessing differs from the winner's fixed rules."""
    pre = spec.preprocessing
    wrong = []
    if pre.input_size != INPUT_SIZE:
        wrong.append(f"input_size {INPUT_SIZE}")
    if not math.isclose(pre.crop_margin, 1 / 3, rel_tol=1e-9):
        wrong.append("crop_margin 1/3")
    if pre.detector_scale != DETECTOR_SCALE:
        wrong.append(f"detector_scale {DETECTOR_SCALE}")
    if tuple(pre.detector_thresholds) != tuple(DETECTOR_THRESHOLDS):
        wrong.append(f"detector_thresholds {list(DETECTOR_THRESHOLDS)}")
    if wrong:
        raise ModelFileError(f"model file {spec.source}: backend dfdc_winner runs the winner's "
                             f"rules; the file must say {', '.join(wrong)}")


def networks(spec: ModelSpec) -> list[torch.nn.Module]:
    check_rules(spec)
    members = []
    for ref in spec.checkpoints:
        model = DeepFakeClassifier(encoder=spec.architecture)
        load_winner_checkpoint(model, ref.path, ref.sha256)
        members.append(model)
    return members


def crop(frame: np.ndarray, box: Box, pre: Preprocessing) -> np.ndarray:
    return face_input(frame, [int(c) for c in box], pre.input_size)


class WinnerFaceDetector:
    """The pipeline's ``FaceDetector`` port over the winner's MTCNN and rules.

    Every face MTCNN returns is kept (as the winner did), with integer boxes in frame pixels,
    except one whose crop would be empty (the winner's resize failed on it), up to the
    winner's :func:`face_limit` per video (127) in frame order, then MTCNN's order.
    ``batch_size`` 1 is the winner's own call; larger batches are faster and can move a box
    by float rounding.
    """

    def __init__(self, device: torch.device, batch_size: int = 1, limit: int | None = None):
        self.batch_size = batch_size
        self.limit = face_limit() if limit is None else limit
        self._mtcnn = winner_mtcnn(device)

    def detect(self, frames: np.ndarray) -> list[list[tuple[Box, float]]]:
        """``frames`` are one video's sampled frames: the face limit counts over all of them."""
        out = []
        height, width = frames.shape[1:3]
        total = 0
        for faces in detect_faces(frames, self._mtcnn, self.batch_size):
            kept = []
            for face in faces:
                if total >= self.limit:
                    break
                top, bottom, left, right = crop_window(face.box, width, height)
                if bottom > top and right > left:
                    kept.append((tuple(float(c) for c in face.box), face.score))
                    total += 1
            out.append(kept)
        return out


def face_detector(spec: ModelSpec, device: torch.device, min_face_size: int, batch_size: int):
    check_rules(spec)
    return WinnerFaceDetector(device, batch_size)


# The winner's frames are linspace(0, frame_count - 1, n) truncated, never moved to cheaper
# ones (media.frame_slack does not apply).
BACKEND = FunctionBackend("dfdc_winner", networks, crop, face_detector, frame_slack=0.0)
