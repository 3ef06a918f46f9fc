"""The classifier checkpoint contract: a pinned sha256, then a strict state-dict load.

A checkpoint is a ``torch.save`` file that ``torch.load(weights_only=True)`` can read. It
is either a bare state dict or a dict with ``state_dict`` (the DFDC-era layout, which may
also hold ``epoch`` and ``bce_best``), and may say which ``architecture`` and ``version``
it is. Keys prefixed ``module.`` (saved from DataParallel) are accepted.

The DFDC winner's checkpoints store ``bce_best`` as a numpy float64 (scikit-learn's log loss),
which ``weights_only`` refuses by default; numpy scalars and their dtypes are allowed, and
nothing else beyond torch's own safe set.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

try:
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import scalar as _np_scalar


class CheckpointError(RuntimeError):
    """The checkpoint is missing, does not match its pinned hash, or does not fit the model."""


# numpy scalars as pickled by numpy 1.x (``numpy.core``) and 2.x (``numpy._core``)
_NUMPY_SCALARS = [
    (_np_scalar, "numpy.core.multiarray.scalar"), (_np_scalar, "numpy._core.multiarray.scalar"),
    np.dtype, *(getattr(np.dtypes, name) for name in (
        "Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType")),
]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    sha256: str
    architecture: str | None
    version: str | None


def verified(path: Path, expected_sha256: str) -> str:
    """The file's sha256, once it is known to be the one the model file pins; else
    :class:`CheckpointError`. Nothing may read a checkpoint before this check."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    expected = expected_sha256.strip().lower()
    actual = sha256_of(path)
    if actual != expected:
        raise CheckpointError(f"checkpoint {path} has sha256 {actual}, the model file pins {expected}")
    return actual


def load_checkpoint(path: Path, expected_sha256: str) -> Checkpoint:
    """Read a checkpoint after checking its sha256; nothing is unpickled before the check."""
    path = Path(path)
    actual = verified(path, expected_sha256)
    try:
        with torch.serialization.safe_globals(_NUMPY_SCALARS):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle that is not a plain weights file
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [repr(exc)]
        reason = next((line for line in lines if "Unsupported global" in line), lines[0])
        raise CheckpointError(f"checkpoint {path} cannot be read as a weights-only torch file: "
                              f"{reason[:300]}") from None
    meta: dict = {}
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        meta, payload = payload, payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in payload.items()}
    return Checkpoint(state_dict=state, sha256=actual,
                      architecture=meta.get("architecture"), version=meta.get("version"))


def save_checkpoint(model: torch.nn.Module, path: Path, architecture: str, version: str) -> str:
    """Write a checkpoint in the layout :func:`load_checkpoint` reads; returns its sha256."""
    torch.save({"state_dict": model.state_dict(), "architecture": architecture,
                "version": version}, path)
    return sha256_of(path)


def load_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Load every tensor or none: missing, unexpected and misshaped keys are named in the error."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
                 for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    problems = [f"{label} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("misshaped", misshaped)) if keys]
    if problems:
        raise CheckpointError(f"checkpoint does not fit {what}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)
