"""Face crops for the classifier: box plus margin, isotropic resize, zero pad, normalise."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def expand_box(box, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer crop window: ``margin`` of the box's width and height added on each side."""
    x1, y1, x2, y2 = box
    pad_w, pad_h = (x2 - x1) * margin, (y2 - y1) * margin
    left = max(0, int(x1 - pad_w))
    top = max(0, int(y1 - pad_h))
    right = min(width, int(round(x2 + pad_w)))
    bottom = min(height, int(round(y2 + pad_h)))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def crop_tensor(frame: np.ndarray, box, margin: float, size: int) -> torch.Tensor:
    """A (3, size, size) float tensor in [0, 255]: the face resized isotropically and centred."""
    height, width = frame.shape[:2]
    left, top, right, bottom = expand_box(box, margin, width, height)
    crop = torch.from_numpy(np.ascontiguousarray(frame[top:bottom, left:right])).permute(2, 0, 1).float()
    h, w = crop.shape[1:]
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = F.interpolate(crop[None], size=(new_h, new_w), mode="bilinear",
                            antialias=scale < 1, align_corners=False)[0]
    out = torch.zeros(3, size, size)
    y0, x0 = (size - new_h) // 2, (size - new_w) // 2
    out[:, y0:y0 + new_h, x0:x0 + new_w] = resized.clamp(0, 255)
    return out


def normalise(batch: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    mean_t = torch.tensor(mean, device=batch.device).view(1, 3, 1, 1) * 255
    std_t = torch.tensor(std, device=batch.device).view(1, 3, 1, 1) * 255
    return (batch - mean_t) / std_t
