"""Face detection with facenet-pytorch's MTCNN, using the weights that ship inside the package."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from facenet_pytorch import MTCNN

from .tracks import Box


class MtcnnDetector:
    """Batched MTCNN over sampled frames.

    Without a model file, large frames are downscaled so that their long side is at most
    ``max_side`` before detection (MTCNN's cost grows with pixels, and faces that matter
    stay large enough). A model file fixes ``scale`` (the DFDC winner detects on frames
    halved, with thresholds [0.7, 0.8, 0.8], and keeps every face MTCNN returns) so that
    the faces its classifier sees are the ones it was published with. Boxes are scaled
    back to frame pixels.
    """

    def __init__(self, device: torch.device, max_side: int = 960, min_face_size: int = 20,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 min_confidence: float = 0.9, batch_size: int = 16, scale: float | None = None):
        self.device = device
        self.max_side = max_side
        self.fixed_scale = scale
        self.min_confidence = min_confidence
        self.batch_size = batch_size
        self._mtcnn = MTCNN(keep_all=True, device=device, min_face_size=min_face_size,
                            thresholds=list(thresholds), post_process=False)

    def detect(self, frames: np.ndarray) -> list[list[tuple[Box, float]]]:
        height, width = frames.shape[1:3]
        scale = self.fixed_scale or min(1.0, self.max_side / max(height, width))
        found: list[list[tuple[Box, float]]] = []
        for start in range(0, len(frames), self.batch_size):
            batch = torch.from_numpy(frames[start:start + self.batch_size]).to(self.device)
            if scale < 1.0:
                batch = self._downscale(batch, scale)
            boxes, probs = self._mtcnn.detect(batch)
            for frame_boxes, frame_probs in zip(boxes, probs):
                found.append(self._keep(frame_boxes, frame_probs, scale, width, height))
        return found

    @staticmethod
    def _downscale(batch: torch.Tensor, scale: float) -> torch.Tensor:
        nchw = batch.permute(0, 3, 1, 2).float()
        size = (max(1, round(nchw.shape[2] * scale)), max(1, round(nchw.shape[3] * scale)))
        small = F.interpolate(nchw, size=size, mode="bilinear", antialias=True, align_corners=False)
        return small.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    def _keep(self, boxes, probs, scale: float, width: int, height: int) -> list[tuple[Box, float]]:
        if boxes is None:
            return []
        kept = []
        for box, prob in zip(boxes, probs):
            if prob is None or prob < self.min_confidence:
                continue
            x1, y1, x2, y2 = (float(c) / scale for c in box)
            x1, y1 = max(0.0, x1), max(0.0, y1)
            x2, y2 = min(float(width), x2), min(float(height), y2)
            if x2 - x1 >= 2 and y2 - y1 >= 2:
                kept.append(((x1, y1, x2, y2), float(prob)))
        return kept
