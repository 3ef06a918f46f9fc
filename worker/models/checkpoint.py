"""The classifier checkpoint contract: a pinned sha256, then a strict state-dict load.

A checkpoint is a ``torch.save`` file that ``torch.load(weights_only=True)`` can read. It
is either a bare state dict or a dict with ``state_dict`` (the DFDC-era layout, which may
also hold ``epoch`` and ``bce_best``), and may say which ``architecture`` and ``version``
it is. Keys prefixed ``module.`` (saved from DataParallel) are accepted.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """The checkpoint is missing, does not match its pinned hash, or does not fit the model."""


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


def load_checkpoint(path: Path, expected_sha256: str) -> Checkpoint:
    """Read a checkpoint after checking its sha256; nothing is unpickled before the check."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    expected = expected_sha256.strip().lower()
    actual = sha256_of(path)
    if actual != expected:
        raise CheckpointError(f"checkpoint {path} has sha256 {actual}, the config pins {expected}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
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
