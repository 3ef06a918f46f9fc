"""The generic backend for an operator's own model: a timm architecture plus a state dict.

The network is built bare (nothing is downloaded) with a one-logit head, and takes its
weights only from the model file's checkpoints, loaded strictly.
"""
from __future__ import annotations

import timm
import torch

from worker.models.backend import FunctionBackend
from worker.models.checkpoint import CheckpointError, load_checkpoint
from worker.models.crops import face_crop
from worker.models.spec import CheckpointRef, ModelSpec

crop = face_crop


def build_model(architecture: str) -> torch.nn.Module:
    """The bare architecture, randomly initialised; weights come only from a checkpoint."""
    try:
        return timm.create_model(architecture, pretrained=False, num_classes=1)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise CheckpointError(f"timm has no architecture {architecture!r}: {exc}") from None


def load_network(architecture: str, ref: CheckpointRef) -> torch.nn.Module:
    loaded = load_checkpoint(ref.path, ref.sha256)
    if loaded.architecture and loaded.architecture != architecture:
        raise CheckpointError(f"checkpoint {ref.path} is for {loaded.architecture}, "
                              f"the model file says {architecture}")
    model = build_model(architecture)
    try:
        model.load_state_dict(loaded.state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {ref.path} does not fit {architecture}: {str(exc)[:500]}") from None
    return model


def networks(spec: ModelSpec) -> list[torch.nn.Module]:
    return [load_network(spec.architecture, ref) for ref in spec.checkpoints]


BACKEND = FunctionBackend("timm", networks, crop)
