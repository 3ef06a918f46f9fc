"""A timm image classifier (EfficientNet by default) with one logit: P(face is fake)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import timm
import torch

from ..events import ModelInfo
from ..tracks import Box
from .checkpoint import CheckpointError, load_checkpoint
from .crops import crop_tensor, normalise


def build_model(architecture: str) -> torch.nn.Module:
    """The bare architecture, randomly initialised; weights come only from a checkpoint."""
    return timm.create_model(architecture, pretrained=False, num_classes=1)


class TimmFaceClassifier:
    def __init__(self, architecture: str, checkpoint: Path, checkpoint_sha256: str,
                 device: torch.device, input_size: int = 224, crop_margin: float = 1 / 3,
                 batch_size: int = 32, name: str | None = None):
        loaded = load_checkpoint(checkpoint, checkpoint_sha256)
        if loaded.architecture and loaded.architecture != architecture:
            raise CheckpointError(f"checkpoint is for {loaded.architecture}, the config says {architecture}")
        model = build_model(architecture)
        try:
            model.load_state_dict(loaded.state_dict, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint does not fit {architecture}: {str(exc)[:500]}") from None
        self.model = model.to(device).eval()
        self.device = device
        self.input_size = input_size
        self.crop_margin = crop_margin
        self.batch_size = batch_size
        self.info = ModelInfo(name=name or architecture, version=loaded.version or "unversioned",
                              checkpoint_sha256=loaded.sha256)
        self.score(np.zeros((1, input_size, input_size, 3), np.uint8), [(0, (0, 0, 32, 32))])  # warm-up

    def score(self, frames: np.ndarray, faces: Sequence[tuple[int, Box]]) -> list[float]:
        crops = [crop_tensor(frames[pos], box, self.crop_margin, self.input_size) for pos, box in faces]
        scores: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(crops), self.batch_size):
                batch = torch.stack(crops[start:start + self.batch_size]).to(self.device)
                logits = self.model(normalise(batch)).float().squeeze(1)
                scores.extend(torch.sigmoid(logits).cpu().tolist())
        return scores
