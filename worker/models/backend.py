"""The model backend contract: what a model file's ``backend`` key names.

A backend owns how its networks are built from the model file's checkpoints, how a face is
cut out of a frame for them, which face detector finds those faces, and whether the sampled
frames may move to cheaper ones. Everything else (batching, precision, devices, the verdict)
is the worker's, the same for every backend. Adding a backend is one module implementing
:class:`Backend`, registered in :mod:`worker.models.loading`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from worker.core.pipeline import FaceDetector
from worker.core.tracks import Box
from worker.models.spec import ModelSpec, Preprocessing


class Backend(Protocol):
    name: str
    #: how far sampled frames may move to cheaper ones, when the backend fixes it (the DFDC
    #: winner's frames are exactly even); None: ``media.frame_slack`` applies
    frame_slack: float | None

    def networks(self, spec: ModelSpec) -> list[torch.nn.Module]:
        """Every checkpoint's network, weights loaded strictly after their sha256 check."""

    def crop(self, frame: np.ndarray, box: Box, pre: Preprocessing) -> np.ndarray:
        """One face as the network's (S, S, 3) uint8 input."""

    def face_detector(self, spec: ModelSpec, device: torch.device, min_face_size: int,
                      batch_size: int) -> FaceDetector:
        """The detector whose boxes the networks were trained on."""


def mtcnn_detector(spec: ModelSpec, device: torch.device, min_face_size: int,
                   batch_size: int) -> FaceDetector:
    """MTCNN at the model file's scale and thresholds, keeping every face it returns: the
    detector of backends that bring none of their own."""
    from worker.faces.mtcnn import MtcnnDetector

    pre = spec.preprocessing
    return MtcnnDetector(device, min_face_size=min_face_size, thresholds=pre.detector_thresholds,
                         min_confidence=0.0, batch_size=batch_size, scale=pre.detector_scale)


@dataclass(frozen=True)
class FunctionBackend:
    """A :class:`Backend` made of a backend module's functions."""

    name: str
    networks: Callable[[ModelSpec], list[torch.nn.Module]]
    crop: Callable[[np.ndarray, Box, Preprocessing], np.ndarray]
    face_detector: Callable[[ModelSpec, torch.device, int, int], FaceDetector] = mtcnn_detector
    frame_slack: float | None = None
