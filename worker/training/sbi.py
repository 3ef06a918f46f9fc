"""Self-Blended Images: a pseudo-fake made from one real face and a transformed copy of itself.

Written from the published description (Shiohara & Yamasaki, "Detecting Deepfakes with
Self-Blended Images", CVPR 2022), not from the authors' code. A face swap leaves traces
where a foreign face is pasted into a frame: a boundary, a colour mismatch, a resolution
mismatch, a slight misalignment. SBI reproduces exactly those traces without any fake
data: the *target* is the real crop as it is, the *source* is a copy with colour,
frequency and structural jitter, and the source is pasted back onto the target through a
soft face-shaped mask. A classifier trained to tell real from self-blended learns the
traces, not the identity of any generator.

The mask comes from MTCNN's five landmarks (eyes, nose tip, mouth corners): their convex
hull, stretched up to the forehead, out to the temples and down to the chin, then
elastically deformed, blurred, and scaled by a blend ratio. Outside the blurred mask the
output is the input, bit for bit.

Pure numpy and Pillow; every random choice comes from the ``numpy.random.Generator`` the
caller passes, so a seed reproduces a blend exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class SelfBlend:
    image: np.ndarray  # (H, W, 3) uint8: the pseudo-fake
    mask: np.ndarray   # (H, W) float32 in [0, 1]: the share of the source in each pixel
    ratio: float       # the blend ratio the mask was scaled by


def self_blend(image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> SelfBlend:
    """Blend ``image`` (H, W, 3 uint8) with a transformed copy of itself inside its face.

    ``landmarks`` are MTCNN's five points (left eye, right eye, nose, left and right mouth
    corner) as (5, 2) x, y pixels of ``image``.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise ValueError(f"expected five finite (x, y) landmarks, got {points.shape}")
    target = image.astype(np.float32)
    source = transform_source(target, points, rng)
    ratio = float(rng.choice(BLEND_RATIOS))
    mask = blend_mask(points, image.shape[:2], rng) * np.float32(ratio)
    blended = source * mask[..., None] + target * (1.0 - mask[..., None])
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return SelfBlend(image=out, mask=mask, ratio=ratio)


# -- the mask ----------------------------------------------------------------------------

def face_polygon(landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The convex hull of the landmarks stretched to cover the face, with random extents."""
    left_eye, right_eye, nose, mouth_left, mouth_right = landmarks
    across = right_eye - left_eye                       # eye to eye
    eyes, mouth = (left_eye + right_eye) / 2, (mouth_left + mouth_right) / 2
    down = mouth - eyes                                 # eyes to mouth
    side = rng.uniform(0.25, 0.5)                       # temples/cheeks beyond the eyes
    forehead = rng.uniform(0.4, 0.8)                    # above the eyes, in eye-mouth lengths
    jaw = rng.uniform(0.25, 0.5)                        # below the mouth corners
    chin = rng.uniform(0.5, 0.8)                        # below the mouth centre
    points = np.stack([
        left_eye - side * across, right_eye + side * across,
        left_eye - side * across - forehead * down, right_eye + side * across - forehead * down,
        eyes - 1.1 * forehead * down,
        mouth_left - 0.5 * side * across + jaw * down, mouth_right + 0.5 * side * across + jaw * down,
        mouth + chin * down, nose,
    ])
    return convex_hull(points)


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain; the hull's vertices counter-clockwise."""
    pts = sorted(map(tuple, np.asarray(points, dtype=np.float64)))
    if len(pts) < 3:
        return np.array(pts)

    def half(seq):
        chain: list[tuple[float, float]] = []
        for p in seq:
            while len(chain) >= 2 and _cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain

    lower, upper = half(pts), half(reversed(pts))
    return np.array(lower[:-1] + upper[:-1])


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def blend_mask(landmarks: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The (H, W) float32 mask in [0, 1] before the blend ratio: hull, deformed, blurred."""
    height, width = shape
    polygon = face_polygon(landmarks, rng)
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in polygon], fill=255)
    mask = np.asarray(canvas, dtype=np.float32) / 255.0
    size = _face_size(landmarks)
    mask = elastic(mask, rng, amplitude=rng.uniform(0.02, 0.08) * size)
    mask = gaussian_blur(mask, sigma=rng.uniform(0.03, 0.1) * size)
    return np.clip(mask, 0.0, 1.0).astype(np.float32)


def _face_size(landmarks: np.ndarray) -> float:
    span = landmarks.max(axis=0) - landmarks.min(axis=0)
    return float(max(4.0, span.max()))


def elastic(mask: np.ndarray, rng: np.random.Generator, amplitude: float, grid: int = 4) -> np.ndarray:
    """A smooth random displacement (a coarse grid of offsets, bilinearly upsampled)."""
    height, width = mask.shape
    coarse = rng.uniform(-amplitude, amplitude, size=(2, grid, grid)).astype(np.float32)
    dy, dx = (np.asarray(Image.fromarray(c, mode="F").resize((width, height), Image.Resampling.BILINEAR))
              for c in coarse)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return remap(mask[..., None], ys + dy, xs + dx, border="zero")[..., 0]


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian with a kernel cut at 3 sigma and zero padding, so the support
    grows by a known radius and nothing leaks further."""
    radius = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / max(sigma, 1e-6)) ** 2)
    kernel /= kernel.sum()
    out = image.astype(np.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad)
        out = sum(weight * np.take(padded, np.arange(k, k + n), axis=axis) for k, weight in enumerate(kernel))
    return out.astype(np.float32)


def remap(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, border: str) -> np.ndarray:
    """Bilinear sampling of (H, W, C) ``image`` at (ys, xs); ``border`` is "zero" or "edge"."""
    height, width = image.shape[:2]
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
    out = np.zeros(ys.shape + image.shape[2:], dtype=np.float32)
    for oy, wy in ((0, 1 - fy), (1, fy)):
        for ox, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + oy, x0 + ox
            inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
            values = image[np.clip(yy, 0, height - 1), np.clip(xx, 0, width - 1)].astype(np.float32)
            if border == "zero":
                values = values * inside[..., None]
            out += values * (wy * wx)
    return out


# -- the source transforms ---------------------------------------------------------------

def transform_source(image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour, then frequency, then structural jitter of a float (H, W, 3) copy."""
    out = colour_jitter(image, rng)
    out = frequency_jitter(out, rng)
    return structural_jitter(out, landmarks, rng)


def colour_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RGB shift, saturation/value scaling (the HSV jitter), brightness and contrast."""
    out = image + rng.uniform(-20, 20, size=3).astype(np.float32)
    grey = out @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out = grey[..., None] + (out - grey[..., None]) * rng.uniform(0.7, 1.3)   # saturation
    out = out * rng.uniform(0.85, 1.15)                                       # value
    mean = out.mean()
    out = (out - mean) * rng.uniform(0.8, 1.2) + mean + rng.uniform(-15, 15)  # contrast, brightness
    return np.clip(out, 0, 255).astype(np.float32)


def frequency_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Either lose detail (down- then up-sample) or add it (unsharp mask)."""
    height, width = image.shape[:2]
    if rng.random() < 0.5:
        factor = rng.uniform(0.3, 0.8)
        small = (max(1, round(width * factor)), max(1, round(height * factor)))
        pil = Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8))
        return np.asarray(pil.resize(small, Image.Resampling.BILINEAR)
                          .resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    blurred = np.stack([gaussian_blur(image[..., c], sigma=1.0) for c in range(3)], axis=-1)
    return np.clip(image + rng.uniform(0.3, 1.0) * (image - blurred), 0, 255).astype(np.float32)


def structural_jitter(image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A small resize about the face centre and a small translation."""
    height, width = image.shape[:2]
    size = _face_size(landmarks)
    cy, cx = landmarks[:, 1].mean(), landmarks[:, 0].mean()
    scale = rng.uniform(0.95, 1.05)
    ty, tx = rng.uniform(-0.04, 0.04, size=2) * size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return remap(image, (ys - cy - ty) / scale + cy, (xs - cx - tx) / scale + cx, border="edge")
