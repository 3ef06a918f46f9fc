"""Running a detector's networks on face crops, the way the hardware wants it.

Every backend (DFDC winner, timm, TorchScript) ends as one or more ``torch.nn.Module``s that
map a normalised (N, 3, S, S) batch to N logits; this module is the one place that runs
them, so batching, precision and memory format are decided once:

- crops are built on the CPU as uint8 (a quarter of the bytes of float) and sent to the
  GPU from pinned memory with non-blocking copies, batch after batch without waiting;
- normalisation runs on the device, in ``channels_last`` layout (what cuDNN's convolution
  kernels prefer on recent GPUs, and oneDNN's on the CPU, where it makes the classifier
  faster too; figures in docs/benchmarks.md), under ``torch.inference_mode()``;
- batch norms that follow a convolution are folded into it (:mod:`.folding`: it saves a pass
  over the activations; the logits move by float rounding);
- on CUDA the networks run under bf16 autocast (same exponent range as fp32, so no loss
  scaling, and the sigmoid outputs are read back in fp32); on the CPU everything stays fp32
  unless ``precision = "bf16"`` asks for bf16 autocast there too (``model.precision``).

Each model is loaded once per process and warmed up once here (the first CUDA call pays
for kernel selection and memory pools, not the first upload).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Sequence

import numpy as np
import torch

from worker.core.events import ModelInfo
from worker.core.tracks import Box
from worker.models.folding import fold_batch_norms
from worker.models.spec import Preprocessing

# A face crop for the network: frame (H, W, 3) uint8 RGB and a box in frame pixels in,
# an (S, S, 3) uint8 RGB square out (S = input_size).
CropFn = Callable[[np.ndarray, Box, Preprocessing], np.ndarray]


class ModelOutputError(RuntimeError):
    """A network did not return one logit per face."""


def _prepare(module: torch.nn.Module, device: torch.device, input_size: int) -> tuple[torch.nn.Module, int]:
    """The network in eval mode, its batch norms folded (:mod:`.folding`, checked on a fixed
    random batch), on ``device`` in ``channels_last``; and the number of folds."""
    sample = torch.rand(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0)) * 4 - 2
    module, folds = fold_batch_norms(module.eval(), sample)
    return module.to(device).to(memory_format=torch.channels_last), folds


def normalise(faces: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float32 N x 3 x H x W: ``(x / 255 - mean) / std``, on the device
    ``faces`` is on (uint8 crops cross to a GPU before they grow fourfold).

    These are the float32 operations the published models were fed; the result is NHWC in
    memory, which *is* ``channels_last``; the caller picks the layout it wants.
    """
    x = faces.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class FaceScorer:
    """The pipeline's ``FaceClassifier`` port for every torch backend.

    ``members`` are the ensemble's networks (one per ``[[checkpoints]]`` entry), each
    returning logits; their sigmoid is the raw probability that a face is fake.
    """

    def __init__(self, members: Sequence[torch.nn.Module], info: ModelInfo, preprocessing: Preprocessing,
                 crop: CropFn, device: torch.device, batch_size: int = 32, precision: str = "auto"):
        if not members:
            raise ValueError("a model needs at least one network")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision is auto, fp32 or bf16, not {precision!r}")
        # auto: bf16 on CUDA, fp32 on the CPU
        self.bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
        self.info = info
        self.preprocessing = preprocessing
        self.device = device
        self.batch_size = batch_size
        self._crop = crop
        prepared = [_prepare(m, device, preprocessing.input_size) for m in members]
        self.members = [m for m, _ in prepared]
        self.folded_norms = sum(folds for _, folds in prepared)  # batch norms folded away
        self._lock = threading.Lock()  # one batch on the device at a time
        size = preprocessing.input_size
        self._mean = torch.tensor(preprocessing.mean, dtype=torch.float32, device=device)
        self._std = torch.tensor(preprocessing.std, dtype=torch.float32, device=device)
        warm = batch_size if device.type == "cuda" else 1
        self.forward(np.zeros((warm, size, size, 3), np.uint8))

    @property
    def uses_cuda(self) -> bool:
        return self.device.type == "cuda"

    def crops(self, frames: np.ndarray, faces: Sequence[tuple[int, Box]]) -> np.ndarray:
        """(N, S, S, 3) uint8: the network's input before normalisation."""
        size = self.preprocessing.input_size
        out = np.empty((len(faces), size, size, 3), np.uint8)
        for i, (pos, box) in enumerate(faces):
            out[i] = self._crop(frames[pos], box, self.preprocessing)
        return out

    def device_batch(self, crops: np.ndarray) -> torch.Tensor:
        """uint8 NHWC on the host to a normalised float NCHW batch on the device."""
        host = torch.from_numpy(np.ascontiguousarray(crops))
        if self.uses_cuda:
            host = host.pin_memory()
        batch = host.to(self.device, non_blocking=self.uses_cuda)
        return normalise(batch, self._mean, self._std).contiguous(memory_format=torch.channels_last)

    def forward(self, crops: np.ndarray) -> np.ndarray:
        """(members, N) raw probabilities for (N, S, S, 3) uint8 crops."""
        count = len(crops)
        if count == 0:
            return np.zeros((len(self.members), 0), np.float32)
        autocast = (torch.autocast(device_type=self.device.type, dtype=torch.bfloat16) if self.bf16
                    else contextlib.nullcontext())
        outputs: list[torch.Tensor] = []
        with self._lock, torch.inference_mode(), autocast:
            for start in range(0, count, self.batch_size):
                batch = self.device_batch(crops[start:start + self.batch_size])
                logits = [self._logits(member, batch) for member in self.members]
                outputs.append(torch.sigmoid(torch.stack(logits).float()))
            # one device-to-host copy, after every batch was queued
            return torch.cat(outputs, dim=1).cpu().numpy()

    @staticmethod
    def _logits(member: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        out = member(batch)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.dim() == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.dim() != 1 or out.shape[0] != batch.shape[0]:
            raise ModelOutputError(f"the network returned shape {tuple(out.shape)}; "
                                   f"one logit per face (N or N x 1) is expected")
        return out

    def score(self, frames: np.ndarray, faces: Sequence[tuple[int, Box]]) -> list[list[float]]:
        return self.forward(self.crops(frames, faces)).tolist()
