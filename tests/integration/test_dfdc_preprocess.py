"""Our DFDC-winner preprocessing gives the winner's tensors on a real video, real MTCNN.

The reference below is written straight from the rules published in
selimsef/dfdc_deepfake_challenge (kernel_utils.py, predict_folder.py), as plainly as possible
and without our functions: OpenCV reads the video frame by frame, Pillow halves each frame
for MTCNN, boxes are doubled and truncated, the crop margin is a floored third, OpenCV resizes
(area down, cubic up) and the face is centred on a zero canvas, then ImageNet normalisation.
Our side decodes with decord, as the worker does.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch  # before decord
import decord  # noqa: E402
from facenet_pytorch import MTCNN
from PIL import Image

from worker.models.dfdc import winner_mtcnn
from worker.models.dfdc_preprocess import (
    MEAN, STD, detect_faces, frame_indices, normalise, video_face_inputs)
from worker.models.inference import normalise as torch_normalise
from worker.testing.samples import sample_video

SIZE = 380


def reference_read(path, num_frames=32):
    capture = cv2.VideoCapture(str(path))
    frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    wanted = np.linspace(0, frame_count - 1, num_frames, endpoint=True, dtype=np.int64)
    frames, read = [], []
    for frame_idx in range(wanted[0], wanted[-1] + 1):
        assert capture.grab()
        if frame_idx == wanted[len(read)]:
            ok, frame = capture.retrieve()
            assert ok
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            read.append(frame_idx)
    capture.release()
    return np.stack(frames), read


def reference_faces(frames, detector):
    """Per frame: list of (box, crop) as the winner's FaceExtractor made them."""
    out = []
    for frame in frames:
        img = Image.fromarray(frame.astype(np.uint8))
        img = img.resize(size=[s // 2 for s in img.size])
        batch_boxes, probs = detector.detect(img, landmarks=False)
        faces = []
        if batch_boxes is not None:
            for bbox in batch_boxes:
                xmin, ymin, xmax, ymax = [int(b * 2) for b in bbox]
                p_h = (ymax - ymin) // 3
                p_w = (xmax - xmin) // 3
                crop = frame[max(ymin - p_h, 0):ymax + p_h, max(xmin - p_w, 0):xmax + p_w]
                faces.append(((xmin, ymin, xmax, ymax), crop))
        out.append(faces)
    return out


def reference_input(crop):
    h, w = crop.shape[:2]
    if max(w, h) == SIZE:
        resized = crop
    else:
        if w > h:
            scale = SIZE / w
            h = h * scale
            w = SIZE
        else:
            scale = SIZE / h
            w = w * scale
            h = SIZE
        interpolation = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
        resized = cv2.resize(crop, (int(w), int(h)), interpolation=interpolation)
    resized = resized[:SIZE, :SIZE]
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    start_w = (SIZE - resized.shape[1]) // 2
    start_h = (SIZE - resized.shape[0]) // 2
    image[start_h:start_h + resized.shape[0], start_w:start_w + resized.shape[1], :] = resized
    return image


def reference_tensor(images):
    x = np.stack(images).astype(np.float32) / 255.0
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    return ((x - mean) / std).transpose(0, 3, 1, 2)


@pytest.fixture(scope="module")
def carphone():
    path = sample_video("carphone_pristine.mp4")
    reader = decord.VideoReader(str(path))
    indices = frame_indices(len(reader))
    return path, indices, reader.get_batch(indices).asnumpy()


@pytest.fixture(scope="module")
def reference_mtcnn():
    return MTCNN(margin=0, thresholds=[0.7, 0.8, 0.8], device="cpu")


def _equivalent(frames, ours_mtcnn, reference_mtcnn, expect_faces):
    reference = reference_faces(frames, reference_mtcnn)
    ours = detect_faces(frames, ours_mtcnn)
    assert [[f.box for f in faces] for faces in ours] == [[b for b, _ in faces] for faces in reference]
    assert sum(len(faces) for faces in ours) == expect_faces

    batch, origin = video_face_inputs(frames, ours)
    expected_images = [reference_input(crop) for faces in reference for _, crop in faces]
    assert origin == [(i, k) for i, faces in enumerate(reference) for k in range(len(faces))]
    assert np.array_equal(batch, np.stack(expected_images))

    expected = reference_tensor(expected_images)
    assert normalise(batch).shape == expected.shape == (expect_faces, 3, SIZE, SIZE)
    np.testing.assert_allclose(normalise(batch), expected, rtol=0, atol=1e-6)
    on_torch = torch_normalise(torch.from_numpy(batch), MEAN, STD).numpy()
    np.testing.assert_allclose(on_torch, expected, rtol=0, atol=1e-6)
    return ours, [[crop.shape[:2] for _, crop in faces] for faces in reference]


def test_carphone_32_frames_match_the_winner(carphone, reference_mtcnn):
    path, indices, frames = carphone
    ref_frames, ref_indices = reference_read(path)
    assert indices == ref_indices and len(indices) == 32
    assert np.array_equal(frames, ref_frames)  # decord decodes this file exactly as OpenCV

    _, crops = _equivalent(frames, winner_mtcnn("cpu"), reference_mtcnn, expect_faces=32)
    assert all(max(shape) < SIZE for faces in crops for shape in faces)  # enlarged: INTER_CUBIC


def test_large_odd_sized_frames_match_the_winner(carphone, reference_mtcnn):
    """Frames 5x larger with odd sides: halving floors, and faces are shrunk (INTER_AREA)."""
    _, _, frames = carphone
    big = np.stack([cv2.resize(f, (881, 719), interpolation=cv2.INTER_LINEAR) for f in frames[::8]])
    blank = np.zeros_like(big[:1])
    ours, crops = _equivalent(np.concatenate([big, blank]), winner_mtcnn("cpu"), reference_mtcnn,
                              expect_faces=4)
    assert ours[-1] == []  # no face in a blank frame
    assert all(max(shape) > SIZE for faces in crops for shape in faces)  # shrunk: INTER_AREA
