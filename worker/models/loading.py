"""From a model file to a loaded detector behind the pipeline's ``FaceClassifier`` port.

Each backend module owns how its networks are built from checkpoints (and, for the DFDC
winner, its exact face crop); this module only picks one by the model file's ``backend``
and hands the networks to :class:`~worker.models.inference.FaceScorer`, which runs them.
"""
from __future__ import annotations

import importlib

import torch

from worker.core.events import ModelInfo
from worker.models.inference import FaceScorer
from worker.models.spec import ModelSpec

_BACKEND_MODULES = {
    "dfdc_winner": "worker.models.dfdc_backend",
    "timm": "worker.models.timm_backend",
    "torchscript": "worker.models.torchscript_backend",
}


def model_info(spec: ModelSpec) -> ModelInfo:
    hashes = spec.checkpoint_sha256s
    return ModelInfo(name=spec.name, version=spec.version, checkpoint_sha256=hashes[0],
                     checkpoint_sha256s=hashes, backend=spec.backend,
                     aggregation=spec.aggregation, calibration=spec.calibration)


def model_frame_slack(spec: ModelSpec | None, configured: float) -> float:
    """How far sampled frames may move to cheaper ones (``media.frame_slack``), unless the
    model file's backend fixes its frames: the DFDC winner's are exactly even."""
    if spec is None:
        return configured
    backend = importlib.import_module(_BACKEND_MODULES[spec.backend])
    return getattr(backend, "FRAME_SLACK", configured)


def load_face_detector(spec: ModelSpec, device: torch.device, min_face_size: int = 20,
                       batch_size: int = 16):
    """The face detector the model file asks for: the backend's own (the DFDC winner's), or
    MTCNN at the file's scale and thresholds, keeping every face MTCNN returns."""
    backend = importlib.import_module(_BACKEND_MODULES[spec.backend])
    if hasattr(backend, "face_detector"):
        return backend.face_detector(spec, device, min_face_size, batch_size)
    from worker.faces.mtcnn import MtcnnDetector

    pre = spec.preprocessing
    return MtcnnDetector(device, min_face_size=min_face_size, thresholds=pre.detector_thresholds,
                         min_confidence=0.0, batch_size=batch_size, scale=pre.detector_scale)


def load_detector_model(spec: ModelSpec, device: torch.device, batch_size: int = 32,
                        precision: str = "auto") -> FaceScorer:
    """Every checkpoint loaded (sha256 first, strictly), moved to ``device`` and warmed up."""
    backend = importlib.import_module(_BACKEND_MODULES[spec.backend])
    return FaceScorer(backend.networks(spec), model_info(spec), spec.preprocessing, backend.crop,
                      device, batch_size, precision)
