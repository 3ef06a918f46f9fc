"""The DFDC winner's preprocessing rules, one at a time, on small synthetic images.

The whole chain on a real video with real MTCNN is tests/integration/test_dfdc_preprocess.py.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from worker.models.dfdc_preprocess import (
    WinnerFace, crop_face, crop_window, detector_image, face_limit, frame_indices,
    isotropic_resize, put_to_center, scale_box_back, video_face_inputs)


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_frame_indices_truncate_not_round():
    assert frame_indices(120)[:4] == [0, 3, 7, 11]  # 3.84 -> 3, 7.68 -> 7, 11.52 -> 11
    assert frame_indices(300)[:4] == [0, 9, 19, 28]
    for count in (1, 10, 120, 300, 4501):
        indices = frame_indices(count)
        assert len(indices) == 32 and indices[0] == 0 and indices[-1] == count - 1
        assert indices == sorted(indices)
    assert len(set(frame_indices(10))) == 10  # short videos repeat indices
    with pytest.raises(ValueError):
        frame_indices(0)


def test_detector_image_is_half_size_floored_bicubic():
    frame = _image(145, 177)
    half = detector_image(frame)
    assert half.size == (88, 72)
    source = Image.fromarray(frame)
    bicubic = source.resize((88, 72), Image.Resampling.BICUBIC)
    nearest = source.resize((88, 72), Image.Resampling.NEAREST)
    assert np.array_equal(np.asarray(half), np.asarray(bicubic))
    # Pillow before 7.0 defaulted to nearest-neighbour; the winner's Docker images have >= 7
    assert not np.array_equal(np.asarray(half), np.asarray(nearest))


def test_boxes_double_and_truncate_toward_zero():
    assert scale_box_back([10.7, 20.2, 40.49, 60.99]) == (21, 40, 80, 121)
    assert scale_box_back(np.array([-3.4, -0.2, 5.0, 6.6], np.float32)) == (-6, 0, 10, 13)


def test_crop_margin_is_a_floored_third_clipped_to_the_frame():
    assert crop_window((100, 50, 160, 131), 640, 480) == (23, 158, 80, 180)  # 81 // 3 = 27
    assert crop_window((-6, 0, 40, 50), 64, 60) == (0, 60, 0, 55)
    frame = _image(60, 64)
    assert crop_face(frame, (-6, 0, 40, 50)).shape == (60, 55, 3)
    with pytest.raises(ValueError, match="leaves nothing"):
        crop_face(frame, (70, 10, 90, 40))


@pytest.mark.parametrize("h, w, size, interpolation", [
    (120, 90, (285, 380), cv2.INTER_CUBIC),      # taller, enlarged
    (90, 121, (380, 282), cv2.INTER_CUBIC),      # wider: 90 * 380 / 121 = 282.6 -> 282
    (700, 500, (271, 380), cv2.INTER_AREA),      # shrunk: 500 * 380 / 700 = 271.4 -> 271
    (300, 300, (380, 380), cv2.INTER_CUBIC),
])
def test_isotropic_resize(h, w, size, interpolation):
    image = _image(h, w)
    out = isotropic_resize(image)
    assert out.shape == (size[1], size[0], 3)
    assert np.array_equal(out, cv2.resize(image, size, interpolation=interpolation))
    other = cv2.INTER_LINEAR
    assert not np.array_equal(out, cv2.resize(image, size, interpolation=other))


def test_isotropic_resize_leaves_380_alone():
    image = _image(380, 200)
    assert isotropic_resize(image) is image


def test_put_to_center_floors_the_offset():
    image = _image(253, 380)
    out = put_to_center(image)
    assert out.shape == (380, 380, 3) and out.dtype == np.uint8
    assert np.array_equal(out[63:316], image)  # (380 - 253) // 2 = 63
    assert not out[:63].any() and not out[316:].any()


def test_video_face_inputs_keep_order_skip_empty_and_cap():
    frames = np.stack([_image(60, 80, seed=i) for i in range(3)])
    face = WinnerFace((10, 10, 40, 40), 0.99)
    outside = WinnerFace((90, 10, 120, 40), 0.9)
    batch, origin = video_face_inputs(frames, [[face, outside, face], [], [face]])
    assert origin == [(0, 0), (0, 2), (2, 0)] and batch.shape == (3, 380, 380, 3)
    batch, origin = video_face_inputs(frames, [[face] * 100, [face] * 30, [face] * 5])
    assert face_limit() == 127 and len(origin) == 127 and origin[-1] == (1, 26)
    batch, origin = video_face_inputs(frames, [[], [], []])
    assert batch.shape == (0, 380, 380, 3) and origin == []
    with pytest.raises(ValueError):
        video_face_inputs(frames, [[face]])
