"""Face crops for the generic backends: box plus margin, isotropic resize, zero pad.

The DFDC winner's exact crop (integer box arithmetic, OpenCV interpolation) lives with
that backend; this one serves the operator's own models (timm, TorchScript), which were
trained with whatever crop the operator chose and describe it in their model file.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from worker.models.spec import Preprocessing


def expand_box(box, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer crop window: ``margin`` of the box's width and height added on each side."""
    x1, y1, x2, y2 = box
    pad_w, pad_h = (x2 - x1) * margin, (y2 - y1) * margin
    left = max(0, int(x1 - pad_w))
    top = max(0, int(y1 - pad_h))
    right = min(width, int(round(x2 + pad_w)))
    bottom = min(height, int(round(y2 + pad_h)))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def face_crop(frame: np.ndarray, box, pre: Preprocessing) -> np.ndarray:
    """(S, S, 3) uint8: the face with its margin, long side resized to S, centred on zeros."""
    size = pre.input_size
    height, width = frame.shape[:2]
    left, top, right, bottom = expand_box(box, pre.crop_margin, width, height)
    crop = torch.from_numpy(np.ascontiguousarray(frame[top:bottom, left:right])).permute(2, 0, 1).float()
    h, w = crop.shape[1:]
    scale = size / max(h, w)
    new_h, new_w = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    resized = F.interpolate(crop[None], size=(new_h, new_w), mode="bilinear",
                            antialias=scale < 1, align_corners=False)[0]
    out = np.zeros((size, size, 3), np.uint8)
    y0, x0 = (size - new_h) // 2, (size - new_w) // 2
    out[y0:y0 + new_h, x0:x0 + new_w] = resized.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return out
