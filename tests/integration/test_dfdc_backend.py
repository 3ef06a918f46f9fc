"""The worker's DFDC-winner backend feeds the network exactly what the winner's rules give.

The rules themselves are checked against a reference in ``test_dfdc_preprocess.py``; here the
worker's own path (its sampler, the backend's face detector, ``FaceScorer``'s crops and its
on-device normalisation) must equal those functions on a real video with real MTCNN, and a
model file that states other rules is refused.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from worker.core.events import ModelInfo
from worker.media.decoding import DecordSampler
from worker.models import dfdc_backend
from worker.models.dfdc import winner_mtcnn
from worker.models.dfdc_preprocess import detect_faces, frame_indices, normalise, video_face_inputs
from worker.models.inference import FaceScorer
from worker.models.spec import ModelFileError, Preprocessing, write_model_file
from worker.testing.samples import sample_video

CPU = torch.device("cpu")
WINNER = Preprocessing(input_size=380, frames_per_video=8)


class Logit(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def sampled():
    return DecordSampler().sample(sample_video("carphone_pristine.mp4"), WINNER.frames_per_video)


def test_the_sampler_takes_the_winners_frames(sampled):
    assert list(sampled.indices) == frame_indices(sampled.frame_count, WINNER.frames_per_video)


def test_the_backend_detects_crops_and_normalises_as_the_winner(sampled):
    frames = sampled.frames
    detector = dfdc_backend.WinnerFaceDetector(CPU, batch_size=1)
    found = detector.detect(frames)
    reference_faces = detect_faces(frames, winner_mtcnn(CPU))
    assert [[box for box, _ in frame] for frame in found] == [
        [tuple(float(c) for c in f.box) for f in frame] for frame in reference_faces]
    assert sum(len(f) for f in found) >= len(frames) - 1  # carphone: one face a frame

    scorer = FaceScorer([Logit()], ModelInfo("w", "1", "0" * 64), WINNER, dfdc_backend.crop, CPU)
    faces = [(pos, box) for pos, frame in enumerate(found) for box, _ in frame]
    crops = scorer.crops(frames, faces)
    reference_crops, _ = video_face_inputs(frames, reference_faces, size=380)
    assert np.array_equal(crops, reference_crops)
    batch = scorer.device_batch(crops)
    assert torch.equal(batch, torch.from_numpy(normalise(reference_crops)))


def test_faces_past_the_winners_limit_are_dropped_in_its_order(sampled):
    # Five carphone frames side by side: five real faces a frame, 160 over 32 frames, more
    # than the 127 the winner scored. The cap keeps the first 127 in frame order, as the
    # winner's buffer did, and the crops still equal the winner's own selection.
    tiled = np.concatenate([sampled.frames] * 5, axis=2)
    frames = np.concatenate([tiled] * 4)  # 32 frames
    detector = dfdc_backend.WinnerFaceDetector(CPU, batch_size=8)
    found = detector.detect(frames)
    counts = [len(frame) for frame in found]
    assert sum(counts) == 127
    assert counts[:25] == [5] * 25 and counts[25] == 2 and counts[26:] == [0] * 6
    reference_faces = detect_faces(frames, winner_mtcnn(CPU), 8)
    assert all(len(frame) == 5 for frame in reference_faces)  # MTCNN finds every copy
    reference_crops, origin = video_face_inputs(frames, reference_faces, size=380)
    scorer = FaceScorer([Logit()], ModelInfo("w", "1", "0" * 64), WINNER, dfdc_backend.crop, CPU)
    crops = scorer.crops(frames, [(pos, box) for pos, frame in enumerate(found) for box, _ in frame])
    assert len(origin) == 127 and np.array_equal(crops, reference_crops)


@pytest.mark.parametrize("change,message", [
    ({"input_size": 224}, "input_size 380"),
    ({"detector_scale": 1.0}, "detector_scale 0.5"),
    ({"crop_margin": 0.25}, "crop_margin 1/3"),
    ({"detector_thresholds": [0.6, 0.7, 0.7]}, r"detector_thresholds \[0.7, 0.8, 0.8\]"),
])
def test_a_model_file_with_other_rules_is_refused(tmp_path, change, message):
    spec = write_model_file(tmp_path / "m.toml", name="w", version="1", backend="dfdc_winner",
                            architecture="tf_efficientnet_b7_ns",
                            checkpoints=[(tmp_path / "absent", "0" * 64)],
                            preprocessing={"input_size": 380, **change},
                            aggregation={"method": "confident_strategy"})
    with pytest.raises(ModelFileError, match=message):
        dfdc_backend.networks(spec)
