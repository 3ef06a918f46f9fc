"""Self-Blended Images: the blend stays inside the face mask and a seed reproduces it."""
from __future__ import annotations

import numpy as np
import pytest

from worker.training.sbi import BLEND_RATIOS, convex_hull, gaussian_blur, self_blend

# A 160x128 image with a face of about 30 px between the eyes, in the upper middle.
LANDMARKS = np.array([[50.0, 60.0], [78.0, 60.0], [64.0, 75.0], [53.0, 90.0], [75.0, 90.0]])


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (160, 128, 3), dtype=np.uint8)


@pytest.mark.parametrize("seed", range(12))
def test_shape_dtype_mask_range_and_locality(seed):
    image = _image()
    blend = self_blend(image, LANDMARKS, np.random.default_rng(seed))
    assert blend.image.shape == image.shape and blend.image.dtype == np.uint8
    assert blend.mask.shape == image.shape[:2] and blend.mask.dtype == np.float32
    assert 0.0 <= blend.mask.min() and blend.mask.max() <= blend.ratio + 1e-6
    assert blend.ratio in BLEND_RATIOS
    # The face is the middle of the mask: fully blended there (up to the ratio).
    assert blend.mask[75, 64] == pytest.approx(blend.ratio, abs=0.05)
    # Far from the face (the bottom rows and the outer columns) the mask is exactly zero...
    assert not blend.mask[140:].any() and not blend.mask[:, :8].any() and not blend.mask[:, -8:].any()
    # ...and the output differs from the input only where the mask is positive.
    changed = (blend.image != image).any(axis=2)
    assert changed.any()
    assert not changed[blend.mask == 0].any()


def test_same_seed_same_blend_other_seed_other_blend():
    image = _image()
    first = self_blend(image, LANDMARKS, np.random.default_rng(7))
    again = self_blend(image, LANDMARKS, np.random.default_rng(7))
    other = self_blend(image, LANDMARKS, np.random.default_rng(8))
    assert np.array_equal(first.image, again.image) and np.array_equal(first.mask, again.mask)
    assert not np.array_equal(first.mask, other.mask)


def test_the_mask_covers_forehead_and_chin_not_just_the_landmarks():
    masks = [self_blend(_image(), LANDMARKS, np.random.default_rng(s)).mask for s in range(8)]
    for mask in masks:
        rows = np.flatnonzero(mask.max(axis=1) > 0)
        assert rows.min() < 60 - 10 and rows.max() > 90 + 8  # above the eyes, below the mouth


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        self_blend(_image().astype(np.float32), LANDMARKS, np.random.default_rng(0))
    with pytest.raises(ValueError, match="landmarks"):
        self_blend(_image(), LANDMARKS[:4], np.random.default_rng(0))
    with pytest.raises(ValueError, match="landmarks"):
        self_blend(_image(), np.full((5, 2), np.nan), np.random.default_rng(0))


def test_convex_hull_and_blur_helpers():
    square = np.array([[0, 0], [2, 0], [2, 2], [0, 2], [1, 1], [1, 0]])
    assert sorted(map(tuple, convex_hull(square))) == [(0, 0), (0, 2), (2, 0), (2, 2)]
    impulse = np.zeros((21, 21), np.float32)
    impulse[10, 10] = 1.0
    blurred = gaussian_blur(impulse, sigma=2.0)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5)
    assert not blurred[:3].any() and not blurred[:, 17:].any()  # cut at 3 sigma = 6 px
    # A kernel longer than the image still keeps the image's shape.
    assert gaussian_blur(np.ones((3, 4), np.float32), sigma=5.0).shape == (3, 4)
