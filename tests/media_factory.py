"""Test videos built with PyAV: every codec decord's FFmpeg decodes, variable frame rate,
rotation metadata, audio-only files and images. Small, so they are made per test run."""
from __future__ import annotations

import fractions
import struct
from pathlib import Path

import av
import numpy as np

from worker.media.container import iter_boxes

# (file name, container format, encoder)
CODECS = [
    ("h264.mp4", "mp4", "libx264"),
    ("hevc.mp4", "mp4", "libx265"),
    ("vp9.webm", "webm", "libvpx-vp9"),
    ("av1.mp4", "mp4", "libsvtav1"),
    ("mpeg4.avi", "avi", "mpeg4"),
]


def frame_image(i: int, width: int, height: int) -> np.ndarray:
    """A frame whose top-left quadrant is bright, so orientation can be checked."""
    image = np.full((height, width, 3), 30, np.uint8)
    image[: height // 2, : width // 2] = 220
    image[..., 1] = (i * 7) % 255
    return image


def write_video(path: Path, fmt: str = "mp4", codec: str = "libx264", width: int = 192,
                height: int = 144, frames: int = 30, fps: int = 25,
                frame_ms: list[int] | None = None) -> Path:
    """Encode a clip; ``frame_ms`` gives each frame's duration (variable frame rate)."""
    out = av.open(str(path), "w", format=fmt)
    stream = out.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.time_base = fractions.Fraction(1, 1000 if frame_ms else fps)
    pictures = []
    pts = 0
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(frame_image(i, width, height), format="rgb24")
        frame.pts = pts
        pts += frame_ms[i % len(frame_ms)] if frame_ms else 1
        pictures.append(frame)
    return _encode(out, stream, pictures, path)


def _encode(out, stream, frames, path: Path) -> Path:
    """Encode and mux ``frames``, flush the encoder, close the file."""
    for frame in frames:
        out.mux(stream.encode(frame))
    out.mux(stream.encode())
    out.close()
    return path


def write_audio_only(path: Path) -> Path:
    out = av.open(str(path), "w", format="mp4")
    stream = out.add_stream("aac", rate=44100)
    frames = []
    for i in range(20):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 44100, i * 1024
        frames.append(frame)
    return _encode(out, stream, frames, path)


_ROTATION_MATRIX = {90: (0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)}


def set_mp4_rotation(path: Path, degrees: int) -> Path:
    """Write a display rotation into the video track header, as phones do for portrait video."""
    data = bytearray(path.read_bytes())
    with open(path, "rb") as stream:
        for kind, start, end in iter_boxes(stream, 0, len(data)):
            if kind != b"moov":
                continue
            for trak, t_start, t_end in iter_boxes(stream, start, end):
                for box, b_start, _ in iter_boxes(stream, t_start, t_end):
                    if trak == b"trak" and box == b"tkhd":
                        at = b_start + (40 if data[b_start] == 0 else 52)
                        data[at:at + 36] = struct.pack(">9i", *_ROTATION_MATRIX[degrees])
    path.write_bytes(bytes(data))
    return path


def corrupt_moov(path: Path, out: Path) -> Path:
    """The same file with the inside of its moov box overwritten."""
    data = bytearray(path.read_bytes())
    at = data.find(b"moov")
    data[at + 4: at + 260] = bytes(range(256))
    out.write_bytes(bytes(data))
    return out


def write_zero_frames(path: Path) -> Path:
    """An MP4 with a video track whose sample table is empty."""
    out = av.open(str(path), "w", format="mp4")
    stream = out.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    out.start_encoding()
    out.close()
    return path


# ---- Labelled clips for the evaluation tests: real carphone segments and face-swap stand-ins

# A box that covers the speaker's face in carphone_pristine.mp4 (176x144) over the whole clip.
CARPHONE_FACE = (38, 26, 116, 104)


def decode_frames(path: Path) -> np.ndarray:
    """Every frame of a video as RGB (N, H, W, 3) uint8."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def write_frames(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    """Encode RGB frames as H.264 in MP4."""
    out = av.open(str(path), "w", format="mp4")
    stream = out.add_stream("libx264", rate=fps)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    return _encode(out, stream, [av.VideoFrame.from_ndarray(f, format="rgb24") for f in frames], path)


def blend_mirrored_face(frames: np.ndarray, donor_shift: int, strength: float = 0.85,
                        box: tuple[int, int, int, int] = CARPHONE_FACE) -> np.ndarray:
    """A face-swap stand-in: inside a soft ellipse over ``box``, each frame is blended with the
    mirrored face region of the frame ``donor_shift`` later (cyclically)."""
    x1, y1, x2, y2 = box
    h, w = y2 - y1, x2 - x1
    yy, xx = np.mgrid[0:h, 0:w]
    r = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    mask = (np.clip((1.0 - r) / 0.3, 0.0, 1.0) * strength)[..., None]
    out = frames.astype(np.float32)
    for i in range(len(frames)):
        donor = frames[(i + donor_shift) % len(frames), y1:y2, x1:x2, :][:, ::-1].astype(np.float32)
        out[i, y1:y2, x1:x2] = (1 - mask) * out[i, y1:y2, x1:x2] + mask * donor
    return out.round().clip(0, 255).astype(np.uint8)
