"""The DFDC winner's inference preprocessing, rule for rule, so its published accuracy carries over.

A checkpoint of selimsef/dfdc_deepfake_challenge (MIT) only scores well on faces prepared the
way its author prepared them at inference (``kernel_utils.py``, ``predict_folder.py``). These
functions restate those rules in our own code; they are pure (numpy, OpenCV, Pillow; no torch):

- 32 frame indices ``linspace(0, frame_count - 1, 32)`` truncated to int (not rounded);
- each frame downscaled to ``(w // 2, h // 2)`` with Pillow's default ``resize`` filter and
  given as a PIL image to MTCNN (``margin=0``, thresholds 0.7/0.8/0.8, other defaults, so the
  largest face comes first); every box it returns is kept, each coordinate ``int(c * 2)``;
- crop margin ``w // 3`` and ``h // 3`` of the integer box on each side, clipped to the frame;
- isotropic resize of the long side to 380 (cv2 ``INTER_AREA`` when shrinking, ``INTER_CUBIC``
  when enlarging, new size truncated to int), then centred on a zero 380x380 canvas;
- ``(x / 255 - mean) / std`` with the ImageNet mean and std, in float32;
- a video's faces in frame order then MTCNN's order, at most ``4 * 32 - 1`` of them.

Pillow's default filter is bicubic since Pillow 7.0 (2020-01-02; nearest-neighbour before).
The repository's Docker images (conda in mid-2020, later pytorch 1.10) install Pillow >= 7, so
bicubic is what its published code does; the Pillow of the Kaggle run that scored the
competition is not recorded.

Deliberate deviations, all at the winner's failure edges: a video shorter than 32 frames
gives repeated indices (the winner's reader then stopped after the first repeat; here the
caller decides); a crop that is empty after clipping is skipped (the winner's resize raised
and the whole video scored 0.5). The winner ran the model in fp16; the model side chooses its
precision. Frames are RGB uint8 ``H x W x 3``, as decord gives them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
from PIL import Image

FRAMES_PER_VIDEO = 32
INPUT_SIZE = 380
DETECTOR_SCALE = 0.5
DETECTOR_THRESHOLDS = (0.7, 0.8, 0.8)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def face_limit(frames_per_video: int = FRAMES_PER_VIDEO) -> int:
    """How many faces of one video the winner scored: its buffer held 4 per frame, less one."""
    return 4 * frames_per_video - 1


def frame_indices(frame_count: int, count: int = FRAMES_PER_VIDEO) -> list[int]:
    """``count`` indices spread evenly from the first to the last frame, truncated to int."""
    if frame_count <= 0:
        raise ValueError(f"a video needs frames, got frame_count={frame_count}")
    return [int(i) for i in np.linspace(0, frame_count - 1, count, endpoint=True).astype(np.int64)]


@dataclass(frozen=True)
class WinnerFace:
    """One MTCNN detection in frame pixels: ``int(c * 2)`` of the downscaled box."""
    box: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax
    score: float


def detector_image(frame: np.ndarray) -> Image.Image:
    """The frame as MTCNN sees it: half size (floor), Pillow's bicubic resize."""
    image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
    return image.resize((image.width // 2, image.height // 2), Image.Resampling.BICUBIC)


def scale_box_back(box: Sequence[float]) -> tuple[int, int, int, int]:
    """A box on the half-size image -> frame pixels: each coordinate times 2, truncated."""
    xmin, ymin, xmax, ymax = (int(float(c) * 2) for c in box)
    return xmin, ymin, xmax, ymax


def detect_faces(frames: Sequence[np.ndarray] | np.ndarray, detector: Any,
                 batch_size: int = 1) -> list[list[WinnerFace]]:
    """Every face MTCNN finds in each frame, in its order (largest first).

    ``detector`` is a facenet-pytorch ``MTCNN`` made as the winner made it (see
    ``worker.models.dfdc.winner_mtcnn``); anything with the same ``detect`` works. The winner
    called it one frame at a time (``batch_size=1``); larger batches run the same networks
    on stacked images, which can move a box by float rounding.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    found: list[list[WinnerFace]] = []
    for start in range(0, len(frames), batch_size):
        images = [detector_image(frame) for frame in frames[start:start + batch_size]]
        if len(images) == 1:
            boxes, probs = detector.detect(images[0], landmarks=False)
            boxes, probs = [boxes], [probs]
        else:
            boxes, probs = detector.detect(images, landmarks=False)
        for frame_boxes, frame_probs in zip(boxes, probs):
            faces = []
            if frame_boxes is not None:
                for box, prob in zip(frame_boxes, frame_probs):
                    if box is not None:
                        faces.append(WinnerFace(scale_box_back(box), float(prob)))
            found.append(faces)
    return found


def crop_window(box: Sequence[int], width: int, height: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the crop: a third of the box (floored) on each side."""
    xmin, ymin, xmax, ymax = (int(c) for c in box)
    pad_w, pad_h = (xmax - xmin) // 3, (ymax - ymin) // 3
    return (max(ymin - pad_h, 0), min(ymax + pad_h, height),
            max(xmin - pad_w, 0), min(xmax + pad_w, width))


def crop_face(frame: np.ndarray, box: Sequence[int]) -> np.ndarray:
    top, bottom, left, right = crop_window(box, frame.shape[1], frame.shape[0])
    if bottom <= top or right <= left:
        raise ValueError(f"face box {tuple(box)} leaves nothing of a "
                         f"{frame.shape[1]}x{frame.shape[0]} frame")
    return frame[top:bottom, left:right]


def isotropic_resize(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Long side to ``size``, aspect kept; INTER_AREA to shrink, INTER_CUBIC to enlarge."""
    height, width = image.shape[:2]
    if max(width, height) == size:
        return image
    if width > height:
        scale = size / width
        new_w, new_h = size, height * scale
    else:
        scale = size / height
        new_w, new_h = width * scale, size
    if int(new_w) < 1 or int(new_h) < 1:
        raise ValueError(f"a {width}x{height} crop has no pixels left at {size}")
    interpolation = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
    return cv2.resize(image, (int(new_w), int(new_h)), interpolation=interpolation)


def put_to_center(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """The image on a zero ``size x size`` canvas, offset by half the spare room (floored)."""
    image = image[:size, :size]
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - image.shape[0]) // 2, (size - image.shape[1]) // 2
    canvas[top:top + image.shape[0], left:left + image.shape[1]] = image
    return canvas


def face_input(frame: np.ndarray, box: Sequence[int], size: int = INPUT_SIZE) -> np.ndarray:
    """One face as the model's uint8 ``size x size x 3`` input, before normalisation."""
    return put_to_center(isotropic_resize(crop_face(frame, box), size), size)


def video_face_inputs(frames: Sequence[np.ndarray] | np.ndarray,
                      faces: Sequence[Sequence[WinnerFace]], size: int = INPUT_SIZE,
                      limit: int | None = None) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """All of a video's faces as one uint8 ``N x size x size x 3`` batch, in the winner's order.

    Returns the batch and, per row, ``(frame position, face position in that frame)``.
    ``limit`` defaults to :func:`face_limit` (127: the winner's buffer, sized for 32 frames
    however many were read); faces past it are dropped.
    Faces whose crop is empty are skipped.
    """
    if len(frames) != len(faces):
        raise ValueError(f"{len(frames)} frames but faces for {len(faces)}")
    limit = face_limit() if limit is None else limit
    rows: list[np.ndarray] = []
    origin: list[tuple[int, int]] = []
    for pos, (frame, frame_faces) in enumerate(zip(frames, faces)):
        for k, face in enumerate(frame_faces):
            if len(rows) >= limit:
                break
            try:
                rows.append(face_input(frame, face.box, size))
            except ValueError:
                continue
            origin.append((pos, k))
    batch = np.stack(rows) if rows else np.zeros((0, size, size, 3), np.uint8)
    return batch, origin


def normalise(faces: np.ndarray, mean: Sequence[float] = MEAN,
              std: Sequence[float] = STD) -> np.ndarray:
    """uint8 ``N x H x W x 3`` -> float32 ``N x 3 x H x W``: ``(x / 255 - mean) / std``."""
    x = np.asarray(faces, dtype=np.uint8).astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - m) / s)
