"""The DFDC winner's classifier, shaped so its published checkpoints load unchanged.

selimsef/dfdc_deepfake_challenge (MIT) won the Deepfake Detection Challenge with seven
EfficientNet-B7 checkpoints. Their state dicts hold a timm ``tf_efficientnet_b7_ns`` under
``encoder`` (with the 1000-class ImageNet head it was created with, unused at inference),
then ``fc = Linear(2560, 1)``. This module rebuilds that shape from timm without downloading
anything; weights come only from a checkpoint. ``tests/data/dfdc_b7_state_dict.json`` records
the published key names and shapes, derived independently, and a test holds us to it.

``forward`` returns logits (N x 1); :func:`fake_probabilities` applies the sigmoid.
"""
from __future__ import annotations

import re
from pathlib import Path

import timm
import torch
from torch import nn

from worker.models.checkpoint import Checkpoint, load_checkpoint, load_strict
from worker.models.dfdc_preprocess import DETECTOR_THRESHOLDS

WINNER_ENCODER = "tf_efficientnet_b7_ns"


def _timm_name(encoder: str) -> str:
    """timm 1.x names the Noisy Student weights as a tag; the architecture is the same."""
    match = re.fullmatch(r"(tf_efficientnet_b\d|tf_efficientnet_l2)_ns", encoder)
    return f"{match.group(1)}.ns_jft_in1k" if match else encoder


class DeepFakeClassifier(nn.Module):
    """timm encoder features -> global average pool -> dropout -> one logit (fake)."""

    def __init__(self, encoder: str = WINNER_ENCODER, dropout_rate: float = 0.0,
                 drop_path_rate: float = 0.2):
        super().__init__()
        self.encoder_name = encoder
        # Default head kept: the published checkpoints carry encoder.classifier (1000 classes).
        self.encoder = timm.create_model(_timm_name(encoder), pretrained=False,
                                         drop_path_rate=drop_path_rate)
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout_rate)
        self.fc = nn.Linear(self.encoder.num_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder.forward_features(x)
        return self.fc(self.dropout(self.avg_pool(features).flatten(1)))


def fake_probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-face P(fake), shape (N,), float32: the sigmoid of the model's logits."""
    return torch.sigmoid(model(x).float().squeeze(1))


def load_winner_checkpoint(model: DeepFakeClassifier, path: Path, sha256: str) -> Checkpoint:
    """Load a published checkpoint into ``model``: sha256 first, ``module.`` stripped, strict.

    Raises ``CheckpointError`` naming the missing, unexpected or misshaped keys.
    """
    loaded = load_checkpoint(path, sha256)
    load_strict(model, loaded.state_dict, f"DeepFakeClassifier({model.encoder_name!r})")
    return loaded


def winner_mtcnn(device: torch.device | str = "cpu"):
    """MTCNN as the winner made it: margin 0, thresholds 0.7/0.8/0.8, otherwise defaults
    (min face 20 px, factor 0.709, largest face first). Weights ship in facenet-pytorch."""
    from facenet_pytorch import MTCNN
    return MTCNN(margin=0, thresholds=list(DETECTOR_THRESHOLDS), select_largest=True,
                 device=torch.device(device))
