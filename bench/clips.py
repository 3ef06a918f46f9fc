"""The benchmark's generated input videos: H.264 clips with a real face, made once and cached.

The sample videos are short and small (QCIF to 720p, 4-10 s), so they say little about
what uploads cost at 1080p or over minutes. These clips put the face of
``carphone_pristine.mp4`` (scaled up, so MTCNN finds it at the detector's scale) on a
panning, textured background at 720p or 1080p, for 10 s, 60 s or 10 minutes, encoded with
libx264 through PyAV. They are written once into a cache folder outside the repository (or
a git-ignored one) and reused; nothing here is committed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.testing.samples import sample_video

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "moderation-bench" / "clips"
FPS = 30
GOP_S = 2           # a keyframe every 2 s, a common upload encoder setting
_VERSION = "v1"     # part of the file name: a change to how clips are made remakes them


@dataclass(frozen=True)
class ClipSpec:
    height: int
    seconds: int

    @property
    def width(self) -> int:
        return self.height * 16 // 9

    @property
    def name(self) -> str:
        length = f"{self.seconds // 60}min" if self.seconds >= 60 else f"{self.seconds}s"
        return f"faces-{self.height}p-{length}-{_VERSION}.mp4"


STANDARD = (ClipSpec(720, 10), ClipSpec(1080, 10), ClipSpec(720, 60), ClipSpec(1080, 60))
LONG = ClipSpec(1080, 600)     # the scaling run's long upload (at LONG_FPS, to keep making it short)
LONG_FPS = 10


def _face_frames(scale: int) -> list[np.ndarray]:
    """The carphone clip's frames (a man talking in a car), each pixel repeated ``scale`` times."""
    import av  # PyAV (a test extra): only needed to make clips, not to reuse them

    with av.open(str(sample_video("carphone_pristine.mp4"))) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return [np.ascontiguousarray(f.repeat(scale, axis=0).repeat(scale, axis=1)) for f in frames]


def _background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth textured canvas 1.5x the frame, panned across so every frame moves."""
    small = rng.integers(40, 200, size=(height * 3 // 64 + 2, width * 3 // 64 + 2, 3), dtype=np.uint8)
    big = small.repeat(32, axis=0).repeat(32, axis=1)
    return np.ascontiguousarray(big[: height * 3 // 2, : width * 3 // 2])


def _ping_pong(i: int, n: int) -> int:
    """0, 1, ..., n-1, n-2, ..., 1, 0, 1, ...: the face plays forwards, then backwards."""
    if n < 2:
        return 0
    k = i % (2 * n - 2)
    return k if k < n else 2 * n - 2 - k


def make_clip(spec: ClipSpec, path: Path) -> Path:
    """Write ``spec``'s clip to ``path`` (atomically: a partial file is never reused)."""
    rng = np.random.default_rng(spec.height * 1000 + spec.seconds)
    faces = _face_frames(3 if spec.height <= 720 else 4)
    face_h, face_w = faces[0].shape[:2]
    canvas = _background(spec.width, spec.height, rng)
    span_x, span_y = canvas.shape[1] - spec.width, canvas.shape[0] - spec.height
    fps = LONG_FPS if spec.seconds > 60 else FPS
    import av

    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23", "g": str(GOP_S * fps)}
        total = spec.seconds * fps
        for i in range(total):
            phase = i / max(1, total - 1)
            ox = int(span_x * (0.5 + 0.5 * np.sin(2 * np.pi * phase * 3)))
            oy = int(span_y * (0.5 + 0.5 * np.cos(2 * np.pi * phase * 2)))
            frame = canvas[oy:oy + spec.height, ox:ox + spec.width].copy()
            # the face wanders over the middle of the frame
            fx = int((spec.width - face_w) * (0.3 + 0.4 * (0.5 + 0.5 * np.sin(i / 45))))
            fy = int((spec.height - face_h) * (0.3 + 0.4 * (0.5 + 0.5 * np.cos(i / 60))))
            frame[fy:fy + face_h, fx:fx + face_w] = faces[_ping_pong(i, len(faces))]
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path


def ensure_clips(specs, cache: Path = DEFAULT_CACHE, log=print) -> list[Path]:
    """The clips of ``specs`` in ``cache``, made where missing."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in specs:
        path = cache / spec.name
        if not path.is_file():
            log(f"making {path} (once; reused on later runs)")
            make_clip(spec, path)
        paths.append(path)
    return paths
