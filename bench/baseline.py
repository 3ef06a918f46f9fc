"""The naive baselines: how DFDC-era inference loops processed videos.

:class:`DfdcEraLoop` is the baseline issue 7 names: the loop of the DFDC winner's published
inference kernel (selimsef/dfdc_deepfake_challenge, ``kernel_utils.py``), which most DFDC-era
code resembled. Per video and in sequence: OpenCV's ``VideoCapture`` reads the video from its
first sampled frame to its last, ``grab()``-ing (decoding) every frame in between and
``retrieve()``-ing (converting to BGR, then RGB) the sampled ones; each frame on its own is
PIL-resized and given to MTCNN (one ``detect`` call a frame); the faces are cropped and
classified in one batch; then the next video.

Both loops are given the worker's frames (:func:`frame_plan`, computed before the timing):
with ``media.frame_slack`` 0 those are the winner's, ``linspace(0, frame_count - 1, n)``
truncated; with slack, the same even spread moved to keyframes within reach, as the worker's
decoder picks them. The baselines see the same frames; how they read them is what differs.

:class:`NaiveLoop` is a stronger sequential reference, kept so that the benchmark shows how
much of the ratio comes from the overlap and cross-video batching alone: per video and strictly
in sequence: read the sampled frames with decord at full
resolution, in the calling process; run MTCNN on them (on the same device as the worker) (frames resized with PIL by the
model file's detector scale, its thresholds, every face kept); crop that video's faces with
the model's own crop; classify them in one fp32 batch on the device; then the next video. Nothing
overlaps: no decoder process, no batching across videos, no reduced-resolution decode.

It uses the same model file (networks, crop, frames per video) and the same MTCNN settings
as the worker, so the benchmark's ratio measures the runtime, not the work.

``throughput.py`` runs each loop in its own process (``python bench/baseline.py --model-file F
--kind dfdc|batched``: one JSON request a line on stdin, the videos and their frames; one
``RESULT`` line of JSON back): a process that has run the worker's pipeline made the DFDC-era
loop ~20 % slower afterwards (bench/README.md), and a baseline must not pay for that.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __name__ == "__main__":  # run as a script: the repository's worker package, not an installed one
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch  # before decord: see docs/runtime.md, "Pitfalls"
import decord
from facenet_pytorch import MTCNN
from PIL import Image

import cv2  # the DFDC-era loop reads with OpenCV, as the winner's kernel did

from worker.media.sampling import choose_frames
from worker.models.loading import backend_of
from worker.models.spec import ModelSpec


def frame_plan(path: Path, count: int, frame_slack: float) -> list[int]:
    """The frames the worker's decoder samples from ``path`` (hash bank off): ``count`` spread
    evenly, moved by up to ``frame_slack`` of their spacing to keyframes or cheaper frames."""
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    keys = [int(i) for i in reader.get_key_indices()] if frame_slack else []
    return choose_frames(len(reader), count, frame_slack, keys)


@dataclass
class VideoResult:
    frames: int
    faces: int
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)


class NaiveLoop:
    def __init__(self, spec: ModelSpec, device: torch.device, min_face_size: int = 20):
        backend = backend_of(spec)
        self.spec = spec
        self.pre = spec.preprocessing
        self.crop = backend.crop
        self.device = device
        self.networks = [n.eval().to(device) for n in backend.networks(spec)]
        self.mtcnn = MTCNN(keep_all=True, device=device, min_face_size=min_face_size,
                           thresholds=list(self.pre.detector_thresholds), post_process=False)
        self.mean = torch.tensor(self.pre.mean).view(1, 3, 1, 1).to(device)
        self.std = torch.tensor(self.pre.std).view(1, 3, 1, 1).to(device)

    def process(self, path: Path, indices: list[int]) -> VideoResult:
        laps = _Laps()
        frames = self.read(path, indices)
        laps("decode")
        faces = self.detect(frames)
        laps("detect_faces")
        if faces:
            self.classify(frames, faces)
            laps("classify")
        return VideoResult(frames=len(frames), faces=len(faces), seconds=laps.total(),
                           stage_seconds=laps.seconds)

    def read(self, path: Path, indices: list[int]) -> np.ndarray:
        """The sampled frames: decord, only those indices (it seeks past keyframes)."""
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        return reader.get_batch(indices).asnumpy()

    def detect(self, frames) -> list[tuple[int, tuple[float, ...]]]:
        """(frame position, box in full-resolution pixels) of every face: one MTCNN call."""
        boxes, _ = self.mtcnn.detect([self.detector_input(f) for f in frames])
        return [(pos, self.full_scale(box)) for pos, frame_boxes in enumerate(boxes)
                if frame_boxes is not None for box in frame_boxes]

    def detector_input(self, frame: np.ndarray) -> Image.Image:
        image = Image.fromarray(frame)
        scale = self.pre.detector_scale
        if scale == 1.0:
            return image
        return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))

    def full_scale(self, box) -> tuple[float, ...]:
        return tuple(float(c) / self.pre.detector_scale for c in box)

    def classify(self, frames, faces) -> None:
        crops = np.stack([self.crop(frames[pos], box, self.pre) for pos, box in faces])
        with torch.no_grad():
            x = torch.from_numpy(crops).to(self.device).permute(0, 3, 1, 2).float() / 255.0
            x = (x - self.mean) / self.std
            scores = [torch.sigmoid(net(x).flatten()).cpu().numpy() for net in self.networks]
        assert all(len(s) == len(faces) for s in scores)


class _Laps:
    """Seconds per stage, each from the end of the one before."""

    def __init__(self):
        self.started = self.mark = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self.mark
        self.mark = now

    def total(self) -> float:
        return time.perf_counter() - self.started


class DfdcEraLoop(NaiveLoop):
    """The DFDC winner's inference loop (see the module docstring), with this run's model file:
    its crop, its networks, its detector scale and thresholds. Only the reading and the
    per-frame detection differ from :class:`NaiveLoop`."""

    def read(self, path: Path, indices: list[int]) -> list[np.ndarray]:
        capture = cv2.VideoCapture(str(path))
        try:
            wanted = sorted(indices)
            frames = []
            for index in range(wanted[0], wanted[-1] + 1):
                if not capture.grab():
                    break
                if index == wanted[len(frames)]:
                    ok, frame = capture.retrieve()
                    if not ok or frame is None:
                        break
                    frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        finally:
            capture.release()
        if not frames:
            raise ValueError(f"{path}: no frame read")
        return frames

    def detect(self, frames) -> list[tuple[int, tuple[float, ...]]]:
        faces = []
        for pos, frame in enumerate(frames):  # one detector call a frame, as the winner's kernel
            boxes, _ = self.mtcnn.detect(self.detector_input(frame))
            if boxes is not None:
                faces.extend((pos, self.full_scale(box)) for box in boxes)
        return faces


def serve(model_file: Path, kind: str, device: str) -> None:
    """The loop as a process: each stdin line is ``{"videos": [[path, [frame indices]], ...]}``;
    the answer is one ``RESULT`` line, a JSON list of :class:`VideoResult`."""
    from worker.models.spec import load_model_spec

    loop = (DfdcEraLoop if kind == "dfdc" else NaiveLoop)(load_model_spec(model_file), torch.device(device))
    for line in sys.stdin:
        request = json.loads(line)
        results = [asdict(loop.process(Path(path), indices)) for path, indices in request["videos"]]
        sys.stdout.write("RESULT " + json.dumps(results) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a baseline loop as a process (for throughput.py)")
    parser.add_argument("--model-file", type=Path, required=True)
    parser.add_argument("--kind", choices=["dfdc", "batched"], default="dfdc")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    serve(args.model_file, args.kind, args.device)
