"""From a model file to a loaded detector behind the pipeline's ``FaceClassifier`` port.

Each backend (:class:`worker.models.backend.Backend`) owns how its networks are built from
checkpoints, its face crop and its face detector; this module picks one by the model file's
``backend`` and hands the networks to :class:`~worker.models.inference.FaceScorer`, which
runs them.
"""
from __future__ import annotations

import torch

from worker.core.events import ModelInfo
from worker.core.pipeline import FaceDetector
from worker.models import dfdc_backend, timm_backend, torchscript_backend
from worker.models.backend import Backend
from worker.models.inference import FaceScorer
from worker.models.spec import ModelSpec

_REGISTERED: dict[str, Backend] = {
    module.BACKEND.name: module.BACKEND for module in (dfdc_backend, timm_backend, torchscript_backend)}


def backend_of(spec: ModelSpec) -> Backend:
    return _REGISTERED[spec.backend]


def model_info(spec: ModelSpec) -> ModelInfo:
    hashes = spec.checkpoint_sha256s
    return ModelInfo(name=spec.name, version=spec.version, checkpoint_sha256=hashes[0],
                     checkpoint_sha256s=hashes, backend=spec.backend,
                     aggregation=spec.aggregation, calibration=spec.calibration)


def model_frame_slack(spec: ModelSpec | None, configured: float) -> float:
    """How far sampled frames may move to cheaper ones (``media.frame_slack``), unless the
    model file's backend fixes its frames."""
    fixed = None if spec is None else backend_of(spec).frame_slack
    return configured if fixed is None else fixed


def load_face_detector(spec: ModelSpec, device: torch.device, min_face_size: int = 20,
                       batch_size: int = 16) -> FaceDetector:
    """The face detector the model file's backend runs."""
    return backend_of(spec).face_detector(spec, device, min_face_size, batch_size)


def load_detector_model(spec: ModelSpec, device: torch.device, batch_size: int = 32,
                        precision: str = "auto") -> FaceScorer:
    """Every checkpoint loaded (sha256 first, strictly), moved to ``device`` and warmed up."""
    backend = backend_of(spec)
    return FaceScorer(backend.networks(spec), model_info(spec), spec.preprocessing, backend.crop,
                      device, batch_size, precision)
