"""Training on a real video: real decord frames, real MTCNN landmarks, a real timm model.

The run is small (a ResNet-10 at 64 px, 8 faces, one fixed self-blend per face) so that
it can overfit within a few seconds on two cores: the loss must fall, a run broken off
and resumed must end with the same weights as an unbroken one, and the checkpoint it
writes must load in the worker and give the worker the same scores the trainer computes.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from worker.__main__ import main
from worker.media.decoding import DecordSampler
from worker.models.checkpoint import load_checkpoint
from worker.models.loading import load_detector_model, load_face_detector
from worker.models.spec import load_model_spec
from worker.testing.samples import sample_video
from worker.training.dataset import (DetectionSettings, SelfBlendedPairs, TrainingDataError, find_videos,
                                     load_faces, step_batches)
from worker.training.train import ModelFileInfo, TrainingError, TrainSettings, preprocessing_of, train

from ..media_factory import write_video

ARCH = "resnet10t"
SIZE = 64
DETECTION = DetectionSettings(frames_per_video=8)
SETTINGS = TrainSettings(architecture=ARCH, input_size=SIZE, steps=24, batch_size=4, lr=1e-3,
                         save_every=8, blend_pool=1, seed=3)
INFO = ModelFileInfo(name="sbi-test", version="test-1")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("face-cache")


@pytest.fixture(scope="module")
def faces(cache):
    found, skipped = load_faces([sample_video("carphone_pristine.mp4")], DETECTION, cache)
    assert skipped == {}
    return found


def _pairs(faces) -> SelfBlendedPairs:
    return SelfBlendedPairs(faces, preprocessing_of(SETTINGS, DETECTION), SETTINGS.seed,
                            blend_pool=SETTINGS.blend_pool)


def test_faces_have_landmarks_inside_their_crops_and_come_from_the_cache(faces, cache):
    assert len(faces) == 8  # carphone has one face in every frame
    for face in faces:
        height, width = face.image.shape[:2]
        assert face.image.dtype == np.uint8 and min(height, width) >= 40
        assert ((face.landmarks >= 0) & (face.landmarks < [width, height])).all()
    assert len(list(cache.glob("*.npz"))) == 1
    again, _ = load_faces([sample_video("carphone_pristine.mp4")], DETECTION, cache)
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.landmarks, b.landmarks)
               for a, b in zip(faces, again))


def test_batches_pair_each_real_face_with_its_blend_in_a_seeded_order(faces):
    pairs = _pairs(faces)
    inputs, labels = pairs.batch(0, 4)
    assert inputs.shape == (8, 3, SIZE, SIZE) and labels.tolist() == [0, 1] * 4
    assert torch.equal(inputs, pairs.batch(0, 4)[0])
    # Two steps of 4 cover all 8 faces once: one permutation per epoch.
    seen = [index for step in (0, 1) for _, index in pairs.indices(step, 4)]
    assert sorted(seen) == list(range(8))
    assert not torch.equal(inputs[0], inputs[1])  # the blend changed the face
    # Blends made in worker processes come in the same order with the same pixels.
    here = list(step_batches(pairs, 4, 1, 4, workers=0))
    there = list(step_batches(pairs, 4, 1, 4, workers=2))
    assert len(here) == len(there) == 3
    for (a, la), (b, lb) in zip(here, there):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_unreadable_and_faceless_videos_are_skipped_with_a_reason(tmp_path, cache):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video at all" * 10)
    blank = write_video(tmp_path / "blank.mp4", frames=10)  # flat colour blocks, no face
    videos = [junk, blank, sample_video("carphone_pristine.mp4")]
    for _ in range(2):  # the second time the faceless video comes from the cache
        faces, skipped = load_faces(videos, DETECTION, cache)
        assert len(faces) == 8 and set(skipped) == {str(junk), str(blank)}
        assert "not_a_video" in skipped[str(junk)] and skipped[str(blank)] == "no face found"
    with pytest.raises(TrainingDataError, match="no face"):
        load_faces([junk, blank], DETECTION, tmp_path / "c")
    with pytest.raises(TrainingDataError, match="neither"):
        find_videos([tmp_path / "missing"])
    assert find_videos([tmp_path]) == [blank.resolve(), junk.resolve()]


def test_loss_falls_resume_matches_an_unbroken_run_and_the_worker_loads_it(faces, tmp_path):
    broken, unbroken = tmp_path / "broken", tmp_path / "unbroken"
    first = train(_pairs(faces), broken, SETTINGS, DETECTION, INFO, progress=False, stop_after=10)
    assert first.step == 10 and first.model_file is None
    with pytest.raises(TrainingError, match="--resume"):
        train(_pairs(faces), broken, SETTINGS, DETECTION, INFO, progress=False)
    resumed = train(_pairs(faces), broken, SETTINGS, DETECTION, INFO, progress=False, resume=True)
    assert resumed.resumed_from == 10 and resumed.step == 24 and len(resumed.losses) == 24
    assert resumed.losses[:10] == first.losses
    # The unbroken run makes its blends in a worker process: the same data either way.
    whole = train(_pairs(faces), unbroken, replace(SETTINGS, workers=1), DETECTION, INFO, progress=False)
    np.testing.assert_allclose(resumed.losses, whole.losses, rtol=1e-4, atol=1e-5)
    a = load_checkpoint(resumed.checkpoint, resumed.sha256).state_dict
    b = load_checkpoint(whole.checkpoint, whole.sha256).state_dict
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)

    losses = resumed.losses
    print("loss per step:", " ".join(f"{v:.3f}" for v in losses))
    assert np.mean(losses[:6]) > 0.6
    assert np.mean(losses[-6:]) < 0.6 * np.mean(losses[:6])

    # Only the last checkpoints are kept; the model file names the final one.
    assert sorted(p.name for p in broken.glob("checkpoint-*.pt")) == [
        "checkpoint-0000016.pt", "checkpoint-0000024.pt"]
    spec = load_model_spec(resumed.model_file)
    assert spec.backend == "timm" and spec.architecture == ARCH and spec.calibration is None
    assert spec.preprocessing == preprocessing_of(SETTINGS, DETECTION)
    assert spec.version == "test-1" and spec.aggregation.method == "mean"
    assert [(c.path, c.sha256) for c in spec.checkpoints] == [(resumed.checkpoint.resolve(), resumed.sha256)]

    # The worker's own path from the model file: decode, its MTCNN, its crop, its scorer.
    scorer = load_detector_model(spec, torch.device("cpu"))
    sampled = DecordSampler().sample(sample_video("carphone_pristine.mp4"), spec.preprocessing.frames_per_video)
    found = load_face_detector(spec, torch.device("cpu")).detect(sampled.frames)
    boxes = [(pos, box) for pos, faces_in_frame in enumerate(found) for box, _ in faces_in_frame]
    assert len(boxes) == len(faces)
    worker_scores = np.array(scorer.score(sampled.frames, boxes)[0])
    # Same pixels in training and serving: the trainer's view of the cached crops scores the same.
    # (No claim about the scores' size: after a few steps at a high learning rate the batch-norm
    # running statistics lag the weights, so eval-mode scores of an overfitted toy say little.)
    pairs = _pairs(faces)
    model = scorer.members[0]
    with torch.inference_mode():
        real = pairs.inputs(np.stack([pairs.resize(face.image) for face in faces]))
        trainer_scores = torch.sigmoid(model(real)).squeeze(1).numpy()
    np.testing.assert_allclose(worker_scores, trainer_scores, atol=1e-5)
    print("worker scores of the real faces:", np.round(worker_scores, 3))

def test_cli_trains_resumes_and_refuses_a_second_fresh_run(tmp_path, cache, capsys):
    video = str(sample_video("carphone_pristine.mp4"))
    common = [video, "--out", str(tmp_path / "run"), "--cache", str(cache), "--architecture", ARCH,
              "--input-size", str(SIZE), "--frames-per-video", "8", "--batch-size", "2",
              "--save-every", "2", "--no-progress"]
    assert main(["train", *common, "--steps", "2"]) == 0
    assert (tmp_path / "run" / "model.toml").is_file()
    assert main(["train", *common, "--steps", "2"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", *common, "--steps", "3", "--resume"]) == 0
    out = capsys.readouterr().out
    assert '"resumed_from": 2' in out and '"step": 3' in out
    assert main(["train", *common, "--steps", "3", "--resume", "--lr", "0.5"]) == 2
    assert "other settings" in capsys.readouterr().err

    # Fine-tuning a published model file: its architecture, weights and preprocessing carry over.
    first = tmp_path / "run" / "model.toml"
    assert main(["train", video, "--out", str(tmp_path / "tuned"), "--cache", str(cache),
                 "--init-model", str(first), "--steps", "1", "--batch-size", "2", "--no-progress",
                 "--aggregation", "confident_strategy"]) == 0
    tuned, origin = load_model_spec(tmp_path / "tuned" / "model.toml"), load_model_spec(first)
    assert tuned.architecture == ARCH and tuned.preprocessing == origin.preprocessing
    assert tuned.aggregation.method == "confident_strategy"
    assert tuned.checkpoint_sha256s != origin.checkpoint_sha256s
    assert main(["train", video, "--out", str(tmp_path / "bad"), "--cache", str(cache),
                 "--init-model", str(tmp_path / "missing.toml"), "--no-progress"]) == 2
    assert "ModelFileError" in capsys.readouterr().err
