"""How long a device stage took: CUDA events on the GPU, the wall clock on the CPU.

Work queued on a GPU runs asynchronously, so a wall clock around the Python call measures
the launch, or the launch plus whatever happened to be queued before it. CUDA events are
recorded on the stream with the work and read after it has finished, so the time is the
device's own. The stages read their results back to the host before returning (MTCNN's
boxes, the classifier's scores), so reading the end event never stalls the GPU further.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass
class Timing:
    seconds: float = 0.0
    source: str = "wall"   # "cuda_events" or "wall"


class StageTimer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda" and torch.cuda.is_available()
        self.device = device

    @contextlib.contextmanager
    def measure(self) -> Iterator[Timing]:
        timing = Timing()
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            yield timing
            end.record()
            end.synchronize()
            timing.seconds, timing.source = start.elapsed_time(end) / 1000.0, "cuda_events"
        else:
            started = time.perf_counter()
            yield timing
            timing.seconds = time.perf_counter() - started
