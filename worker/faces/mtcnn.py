"""Face detection with facenet-pytorch's MTCNN, using the weights that ship inside the package."""
from __future__ import annotations

import cv2
import numpy as np
import torch
from facenet_pytorch import MTCNN

from worker.core.tracks import Box


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
        self._mtcnn = worker_mtcnn(device, min_face_size, thresholds)

    def detect(self, frames: np.ndarray) -> list[list[tuple[Box, float]]]:
        height, width = frames.shape[1:3]
        scale = self.fixed_scale or min(1.0, self.max_side / max(height, width))
        found: list[list[tuple[Box, float]]] = []
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start:start + self.batch_size]
            if scale < 1.0:
                chunk = self.downscale(chunk, scale)
            boxes, probs = self._mtcnn.detect(planar(torch.from_numpy(chunk).to(self.device)))
            for frame_boxes, frame_probs in zip(boxes, probs):
                found.append(self._keep(frame_boxes, frame_probs, scale, width, height))
        return found

    @staticmethod
    def downscale(frames: np.ndarray, scale: float) -> np.ndarray:
        """Frames (N, H, W, 3) uint8 shrunk by ``scale``, on the host, with OpenCV's area
        filter (a 2x2 mean when halving): much cheaper than a float antialiased resize in
        torch (docs/benchmarks.md), and a smaller copy reaches the device."""
        height, width = frames.shape[1:3]
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = np.empty((len(frames), size[1], size[0], frames.shape[3]), np.uint8)
        for i, frame in enumerate(frames):
            cv2.resize(frame, size, dst=small[i], interpolation=cv2.INTER_AREA)
        return small

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


def worker_mtcnn(device: torch.device, min_face_size: int,
                 thresholds: tuple[float, float, float]) -> MTCNN:
    """facenet-pytorch's MTCNN (every face kept, no post-processing) with its networks laid
    out as the worker runs them; the trainer's landmark detector uses it too, so training
    crops come from the boxes the worker finds.

    PNet gets ``channels_last`` input, as stock MTCNN gives it from NHWC frames. On a CPU,
    RNet and ONet do too: facenet-pytorch stacks their crops in planar memory, where
    oneDNN's kernels for these small inputs are several times slower (figures in
    docs/benchmarks.md, "What each change measured"). The arithmetic is the same up to the
    order of the convolutions' sums: boxes move by at most ~2e-4 px
    (tests/integration/test_faces.py). The gain is known on a CPU only, so other devices
    keep the stock layout there."""
    mtcnn = MTCNN(keep_all=True, device=device, min_face_size=min_face_size,
                  thresholds=list(thresholds), post_process=False)
    mtcnn.pnet = ChannelsLastInput(mtcnn.pnet)
    if device.type == "cpu":
        mtcnn.rnet = ChannelsLastInput(mtcnn.rnet)
        mtcnn.onet = ChannelsLastInput(mtcnn.onet)
    return mtcnn


def planar(frames: torch.Tensor) -> torch.Tensor:
    """NHWC frames as an NHWC view of planar (NCHW) memory.

    facenet-pytorch permutes its NHWC input to NCHW and builds the image pyramid and the
    RNet/ONet crops with torch's area filter, which runs faster on planar memory than on the
    interleaved memory a plain NHWC array gives (figures in docs/benchmarks.md). The values
    are the same, bit for bit.
    """
    return frames.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)


class ChannelsLastInput(torch.nn.Module):
    """One of MTCNN's networks fed ``channels_last`` input, which its convolutions run fastest
    on. For PNet it is the layout stock MTCNN gives it from NHWC frames, so with
    :func:`planar` the arithmetic is the stock one, bit for bit."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        return self.net(x.contiguous(memory_format=torch.channels_last))
