"""Video fingerprints: PDQ hashes of frames sampled about once a second, as vPDQ has them.

Each sampled frame keeps its plain PDQ hash (the whole frame, as ThreatExchange's vPDQ
reference hashes it), which is what ``to_vpdq_text`` exports, so other platforms can use
our hashes and we can use theirs. Plain per-frame PDQ does not survive a 5% crop, an added
border or letterbox bars, a caption bar, or a mirror, so each frame also carries flagged
extra hashes that stay in our own bank: the frame with uniform borders trimmed, centre
crops at a few scales (so that a crop of the video lines up with a crop of the original),
and the mirror image of each of those.

A copy cut on one side only (a watermark or a frame edge removed) lines up with no centre
crop, so centre crops alone miss it. So each frame also gets one-sided "un-crop" hashes, on
the query side only: for each side and each depth ``p`` in ``side_crops``, on the guess that
the frame is the original with ``p`` cut off that side, the region of it that was the
original's centre crop at ``side_crop_target`` (a centre crop the bank already holds). PDQ
survives a mis-crop of only about 1 to 2%, so the guesses are 5, 7.5 and 10%: cuts at those
depths match, and most cuts 1% away from one still do. Being query-side guesses, they cost
lookups, not bank memory: hashing them on the bank side instead (entries cropped on each
side) matched a little more, but made every entry several times larger
(``query_side_only``; ``VideoFingerprint.bank_side`` drops them from stored entries). They
do cost hashing: 20 hashes a frame instead of 8. The figures behind these choices are in
docs/benchmarks.md ("Figures behind design choices in the code").

Frames are downscaled before hashing (the plain hash to at most ``plain_max_side``, the
extra hashes to ``variant_max_side``): PDQ's cost grows with the pixels, so a small frame
hashes many times faster, and hashing every region at one size makes a half-size copy hash
like its original. ``plain_max_side=None`` hashes plain frames at full size, exactly as the
reference.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import pdqhash
from PIL import Image

from worker.bank.hamming import hamming

PLAIN = "plain"
TRIM = "trim"
SIDES = ("left", "right", "top", "bottom")
HASH_BYTES = 32
_FORMAT = "vpdq-variants/1"


@dataclass(frozen=True)
class FrameHash:
    """One PDQ hash of one region of a frame. ``mirrored``: of the left-right mirror image."""

    kind: str
    hash: bytes
    quality: int
    mirrored: bool = False

    def __post_init__(self):
        if len(self.hash) != HASH_BYTES:
            raise ValueError(f"a PDQ hash is {HASH_BYTES} bytes, not {len(self.hash)}")
        if not 0 <= self.quality <= 100:
            raise ValueError(f"PDQ quality is 0..100, not {self.quality}")

    @property
    def hex(self) -> str:
        return self.hash.hex()


@dataclass(frozen=True)
class FrameFingerprint:
    """A sampled frame: its index and timestamp in the video, and its hashes, plain first."""

    frame_index: int
    timestamp_s: float
    hashes: tuple[FrameHash, ...]

    def __post_init__(self):
        if not self.hashes or self.hashes[0].kind != PLAIN or self.hashes[0].mirrored:
            raise ValueError("a frame's first hash is its plain, unmirrored hash")
        if self.frame_index < 0 or self.timestamp_s < 0:
            raise ValueError("frame index and timestamp must not be negative")

    @property
    def plain(self) -> FrameHash:
        return self.hashes[0]


@dataclass(frozen=True)
class VideoFingerprint:
    frames: tuple[FrameFingerprint, ...]

    def plain_only(self) -> VideoFingerprint:
        """The part that vPDQ text carries: plain hashes only."""
        return VideoFingerprint(tuple(FrameFingerprint(f.frame_index, f.timestamp_s, (f.plain,))
                                      for f in self.frames))

    def bank_side(self) -> VideoFingerprint:
        """Without the query-only hashes: what a bank entry stores."""
        return VideoFingerprint(tuple(
            FrameFingerprint(f.frame_index, f.timestamp_s,
                             tuple(h for h in f.hashes if not query_side_only(h.kind)))
            for f in self.frames))

    def to_vpdq_text(self) -> str:
        """ThreatExchange vPDQ lines: ``frame,quality,hex,timestamp`` (3 decimals)."""
        return "".join(f"{f.frame_index},{f.plain.quality},{f.plain.hex},{f.timestamp_s:.3f}\n"
                       for f in self.frames)

    @classmethod
    def from_vpdq_text(cls, text: str) -> VideoFingerprint:
        frames = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            # Like the reference reader: four fields at least, any further ones ignored.
            parts = line.strip().split(",")
            if len(parts) < 4:
                raise ValueError(f"vPDQ line {number}: expected frame,quality,hash,timestamp")
            try:
                plain = FrameHash(PLAIN, _hash_from_hex(parts[2]), int(parts[1]))
                frames.append(FrameFingerprint(int(parts[0]), round(float(parts[3]), 3), (plain,)))
            except ValueError as exc:
                raise ValueError(f"vPDQ line {number}: {exc}") from None
        return cls(tuple(frames))

    def to_json(self) -> str:
        """Everything, extra hashes included: the form our own bank stores."""
        return json.dumps({"format": _FORMAT, "frames": [
            {"frame": f.frame_index, "timestamp": f.timestamp_s,
             "hashes": [[h.kind, h.hex, h.quality, h.mirrored] for h in f.hashes]}
            for f in self.frames]}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> VideoFingerprint:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise ValueError(f"not a {_FORMAT} fingerprint")
        return cls(tuple(
            FrameFingerprint(int(f["frame"]), float(f["timestamp"]), tuple(
                FrameHash(str(kind), _hash_from_hex(hex_), int(quality), bool(mirrored))
                for kind, hex_, quality, mirrored in f["hashes"]))
            for f in doc["frames"]))


@dataclass(frozen=True)
class HashingConfig:
    """How frames are sampled and which extra hashes they get."""

    seconds_per_hash: float = 1.0
    plain_max_side: int | None = 512
    variant_max_side: int = 256
    centre_scales: tuple[float, ...] = (0.9, 0.8, 0.7)
    side_crops: tuple[float, ...] = (0.05, 0.075, 0.1)  # guessed cuts off one side (``SIDES``)
    side_crop_target: float = 0.8  # the centre crop the guesses line up with
    # Size the guesses are hashed at. 128 would hash them faster but loses frames on a few cuts
    # at the guessed depths, so they keep 256 (docs/benchmarks.md).
    guess_max_side: int = 256
    trim_borders: bool = True
    mirror: bool = True
    border_tolerance: int = 10
    extra_hashes: bool = True

    def __post_init__(self):
        if self.seconds_per_hash < 0:
            raise ValueError("seconds_per_hash must not be negative (0: every frame)")
        if any(not 0.2 <= s < 1.0 for s in self.centre_scales):
            raise ValueError("centre_scales must lie in [0.2, 1)")
        if self.side_crops and self.side_crop_target not in self.centre_scales:
            raise ValueError("side_crop_target must be one of centre_scales")
        if any(not 0.0 < s <= (1 - self.side_crop_target) / 2 + 1e-9 for s in self.side_crops):
            raise ValueError("side_crops must lie in (0, (1 - side_crop_target) / 2]")

    @classmethod
    def reference(cls) -> HashingConfig:
        """Plain vPDQ: whole frames at full size, nothing extra."""
        return cls(plain_max_side=None, extra_hashes=False)


def fingerprint_frames(frames: np.ndarray | Sequence[np.ndarray], timestamps_s: Sequence[float],
                       frame_indices: Sequence[int] | None = None,
                       config: HashingConfig = HashingConfig()) -> VideoFingerprint:
    """Fingerprint decoded RGB uint8 frames (N, H, W, 3) with their timestamps in seconds.

    About one frame per ``config.seconds_per_hash`` is hashed (the frame nearest each step);
    ``frame_indices`` are the frames' numbers in the video (default: their positions).
    """
    if len(frames) != len(timestamps_s):
        raise ValueError("one timestamp per frame")
    indices = list(range(len(frames))) if frame_indices is None else list(frame_indices)
    if len(indices) != len(frames):
        raise ValueError("one frame index per frame")
    return VideoFingerprint(tuple(
        FrameFingerprint(int(indices[i]), round(max(0.0, float(timestamps_s[i])), 3),
                         hash_frame(np.asarray(frames[i]), config))
        for i in select_frames(timestamps_s, config.seconds_per_hash)))


def fingerprint_entry(frames: np.ndarray | Sequence[np.ndarray], timestamps_s: Sequence[float],
                      frame_indices: Sequence[int] | None = None,
                      config: HashingConfig = HashingConfig(), keep_distance: int = 16,
                      seconds_per_frame: float = 1.0) -> VideoFingerprint:
    """A bank entry's fingerprint from densely decoded frames (every frame, or many a
    second): the frames :func:`thin_dense` keeps, with their bank-side hashes."""
    if len(frames) != len(timestamps_s):
        raise ValueError("one timestamp per frame")
    indices = list(range(len(frames))) if frame_indices is None else list(frame_indices)
    if len(indices) != len(frames):
        raise ValueError("one frame index per frame")
    bank = replace(config, side_crops=())  # the query-side guesses are never stored
    return VideoFingerprint(tuple(
        FrameFingerprint(int(indices[i]), round(max(0.0, float(timestamps_s[i])), 3),
                         hash_frame(np.asarray(frames[i]), bank))
        for i in thin_dense(frames, timestamps_s, config, keep_distance, seconds_per_frame)))


def thin_dense(frames: np.ndarray | Sequence[np.ndarray], timestamps_s: Sequence[float],
               config: HashingConfig = HashingConfig(), keep_distance: int = 16,
               seconds_per_frame: float = 1.0) -> list[int]:
    """Positions of the frames an entry keeps: in time order, a frame is kept when its plain
    hash is more than ``keep_distance`` bits from the last kept frame's, or when
    ``seconds_per_frame`` has passed since it.

    Why: an upload is hashed at about one frame a second at a phase set by wherever it was
    trimmed, so its frames fall between the entry's. Every frame dropped here is within
    ``keep_distance`` bits of the kept frame before it, so an upload frame that is a copy of
    it (re-encoded: a few bits off) is within ``keep_distance`` plus those bits of a kept
    frame, by the triangle inequality, at any phase. A still picture keeps one frame a
    second; a fast pan keeps most of its frames. Bank memory follows how much the picture
    changes, not the frame rate. The guarantee is the plain hash's; the cropped and mirrored
    hashes change with the picture as it does and are kept with the same frames.
    """
    if len(frames) != len(timestamps_s):
        raise ValueError("one timestamp per frame")
    kept: list[int] = []
    last_hash, last_time = None, 0.0
    for i in np.argsort(np.asarray(timestamps_s, dtype=np.float64), kind="stable").tolist():
        digest, _ = pdq_hash(shrink(np.asarray(frames[i]), config.plain_max_side))
        time_s = float(timestamps_s[i])
        if (last_hash is None or time_s - last_time >= seconds_per_frame - 1e-6
                or hamming(digest, last_hash) > keep_distance):
            kept.append(i)
            last_hash, last_time = digest, time_s
    return sorted(kept)


def select_frames(timestamps_s: Sequence[float], seconds_per_hash: float) -> list[int]:
    """Positions of the frames nearest to first, first + step, first + 2 step, ..."""
    times = np.asarray(timestamps_s, dtype=np.float64)
    if len(times) <= 1 or seconds_per_hash <= 0:
        return list(range(len(times)))
    order = np.argsort(times, kind="stable")
    times = times[order]
    grid = np.arange(times[0], times[-1] + seconds_per_hash / 2, seconds_per_hash)
    after = np.searchsorted(times, grid).clip(1, len(times) - 1)
    nearest = np.where(grid - times[after - 1] <= times[after] - grid, after - 1, after)
    return sorted({int(order[i]) for i in nearest})

def hash_frame(frame: np.ndarray, config: HashingConfig = HashingConfig()) -> tuple[FrameHash, ...]:
    """The plain hash of a frame, then (if configured) its trimmed, cropped and mirrored ones."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 frame (H, W, 3), got {frame.dtype} {frame.shape}")
    base = shrink(frame, config.plain_max_side)
    hashes = [_hash(PLAIN, base, False)]
    if not config.extra_hashes:
        return tuple(hashes)
    if config.mirror:
        hashes.append(_hash(PLAIN, base[:, ::-1], True))
    regions: list[tuple[str, np.ndarray]] = []
    if config.trim_borders:
        # Found on a small copy (cheap), then cut from the larger one.
        small = shrink(base, config.variant_max_side)
        top, bottom, left, right = uniform_borders(small, config.border_tolerance)
        if (top, bottom, left, right) != (0, 0, 0, 0):
            ky, kx = base.shape[0] / small.shape[0], base.shape[1] / small.shape[1]
            base = base[round(top * ky): base.shape[0] - round(bottom * ky),
                        round(left * kx): base.shape[1] - round(right * kx)]
            regions.append((TRIM, base))
    for scale in config.centre_scales:
        regions.append((f"centre{round(scale * 100)}", centre_crop(base, scale)))
    for kind, region in regions:
        region = shrink(region, config.variant_max_side)
        hashes.append(_hash(kind, region, False))
        if config.mirror:
            hashes.append(_hash(kind, region[:, ::-1], True))
    for fraction in config.side_crops:
        for side in SIDES:
            region = uncrop_region(base, side, fraction, config.side_crop_target)
            hashes.append(_hash(f"{side}{round(fraction * 1000)}",
                                shrink(region, config.guess_max_side), False))
    return tuple(hashes)


def side_crop(image: np.ndarray, side: str, fraction: float) -> np.ndarray:
    """The image with ``fraction`` of its width (height) cut off one side."""
    height, width = image.shape[:2]
    dy, dx = round(height * fraction), round(width * fraction)
    return {"left": image[:, dx:], "right": image[:, :width - dx],
            "top": image[dy:], "bottom": image[:height - dy]}[side]


def uncrop_region(image: np.ndarray, side: str, fraction: float, target: float) -> np.ndarray:
    """If ``image`` is an original with ``fraction`` of it cut off ``side``, the region of it
    that is the original's centre crop at scale ``target``."""
    height, width = image.shape[:2]
    low, high = (1 - target) / 2, (1 + target) / 2
    # Along the cut axis, the original's [low, high] in the copy's own fractions.
    if side in ("left", "top"):
        a, b = (low - fraction) / (1 - fraction), (high - fraction) / (1 - fraction)
    else:
        a, b = low / (1 - fraction), high / (1 - fraction)
    if side in ("left", "right"):
        return image[round(low * height):round(high * height), round(a * width):round(b * width)]
    return image[round(a * height):round(b * height), round(low * width):round(high * width)]


def query_side_only(kind: str) -> bool:
    """The one-sided un-crop guesses are compared from the query side only: a bank entry is
    an original, whose centre crops they are meant to meet."""
    return kind.rstrip("0123456789") in SIDES and kind != kind.rstrip("0123456789")


def pdq_hash(image: np.ndarray) -> tuple[bytes, int]:
    """PDQ hash (32 bytes, in the order of the reference's hex form) and quality 0..100."""
    bits, quality = pdqhash.compute(np.ascontiguousarray(image))
    return np.packbits(bits.astype(np.uint8)).tobytes(), int(quality)


def shrink(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """The image scaled down (area-averaged) so that its longer side is at most ``max_side``."""
    height, width = image.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.BOX))


def centre_crop(image: np.ndarray, scale: float) -> np.ndarray:
    height, width = image.shape[:2]
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    y, x = (height - h) // 2, (width - w) // 2
    return image[y:y + h, x:x + w]


def uniform_borders(image: np.ndarray, tolerance: int = 10,
                    min_keep: float = 0.5) -> tuple[int, int, int, int]:
    """Widths (top, bottom, left, right) of uniform bars around the picture.

    A bar is a run of edge rows (columns) whose pixels are nearly all within ``tolerance``
    of the border colour. Only bars on both opposite sides count, as letterboxing and added
    borders are: a caption bar along one edge stays, so the crops of a captioned copy still
    line up with those of its original.
    """
    pixels = image.astype(np.int16)
    ring = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    near = (np.abs(pixels - np.median(ring, axis=0)).max(axis=2) <= tolerance)
    rows, cols = near.mean(axis=1) >= 0.98, near.mean(axis=0) >= 0.98
    top, bottom = _run(rows), _run(rows[::-1])
    left, right = _run(cols), _run(cols[::-1])
    height, width = near.shape
    if not (top and bottom) or height - top - bottom < height * min_keep:
        top = bottom = 0
    if not (left and right) or width - left - right < width * min_keep:
        left = right = 0
    return top, bottom, left, right


def _run(flags: np.ndarray) -> int:
    """How many leading entries are True."""
    false = np.flatnonzero(~flags)
    return int(false[0]) if len(false) else len(flags)


def _hash(kind: str, image: np.ndarray, mirrored: bool) -> FrameHash:
    digest, quality = pdq_hash(image)
    return FrameHash(kind, digest, quality, mirrored)


def _hash_from_hex(text: str) -> bytes:
    text = text.strip()
    if len(text) != 2 * HASH_BYTES:
        raise ValueError(f"a PDQ hash is {2 * HASH_BYTES} hex digits")
    return bytes.fromhex(text)

