"""The generic backend for a scripted model: ``torch.jit.load`` of a TorchScript file.

The operator exports whatever network they trained (``torch.jit.script`` or ``trace``) with
its weights inside; the worker needs no Python code of theirs. The scripted module maps a
normalised (N, 3, S, S) float batch to N logits (N or N x 1). The file's sha256 is checked
before it is loaded.
"""
from __future__ import annotations

import torch

from worker.models.backend import FunctionBackend
from worker.models.checkpoint import CheckpointError, verified
from worker.models.crops import face_crop
from worker.models.spec import CheckpointRef, ModelSpec

crop = face_crop


def load_network(ref: CheckpointRef) -> torch.nn.Module:
    verified(ref.path, ref.sha256)
    try:
        return torch.jit.load(str(ref.path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{ref.path} is not a TorchScript file: {str(exc)[:300]}") from None


def networks(spec: ModelSpec) -> list[torch.nn.Module]:
    return [load_network(ref) for ref in spec.checkpoints]


BACKEND = FunctionBackend("torchscript", networks, crop)
