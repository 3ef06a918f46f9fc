"""``python -m worker eval`` end to end: a FaceForensics++-layout dataset the test builds from
the carphone sample (real segments, and face-swap stand-ins made from them), decord, the
real MTCNN, a test-made EfficientNet checkpoint named by a model file (``model.config``); the
report checked against scikit-learn on the predictions file; an interrupted run resumed; the
model file's calibration giving calibrated figures while the predictions stay raw; calibrate
refusing too small a set, then writing a [calibration] the worker loads and acts on.

The checkpoint is randomly initialised, so its AUC means nothing and is never asserted:
these tests check the machinery, not a detector's quality.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn import metrics as sk

from tests.media_factory import blend_mirrored_face, corrupt_moov, decode_frames, write_frames, write_video
from worker.__main__ import main
from worker.core.calibration import Calibration
from worker.core.policy import MODEL_UNCALIBRATED, REVIEW, TAKEDOWN, Policy, decide
from worker.core.tracks import Detection, FaceTrack
from worker.models.checkpoint import save_checkpoint
from worker.models.spec import load_model_spec, save_calibration
from worker.models.timm_backend import build_model
from worker.testing.samples import sample_video

from .conftest import ARCH, write_test_model_file

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ffpp_dataset(tmp_path_factory):
    """4 real and 4 fake carphone clips, one corrupt fake, one real clip without a face."""
    root = tmp_path_factory.mktemp("ffpp")
    real_dir = root / "original_sequences" / "youtube" / "c23" / "videos"
    fake_dir = root / "manipulated_sequences" / "FaceSwap" / "c23" / "videos"
    real_dir.mkdir(parents=True)
    fake_dir.mkdir(parents=True)
    frames = decode_frames(sample_video("carphone_pristine.mp4"))
    for k, start in enumerate((0, 30, 60, 90)):
        segment = frames[start:start + 16]
        write_frames(real_dir / f"00{k}.mp4", segment)
        write_frames(fake_dir / f"00{k}_00{(k + 1) % 4}.mp4", blend_mirrored_face(segment, 8))
    corrupt_moov(real_dir / "000.mp4", fake_dir / "009_000.mp4")
    write_video(real_dir / "005.mp4", frames=16)  # flat synthetic frames: no face
    return root


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "random-b0.pt"
    return path, save_checkpoint(build_model(ARCH), path, ARCH, "test-random")


def _model_file(folder: Path, checkpoint) -> Path:
    """An uncalibrated timm model file for the checkpoint: 4 frames, 112-pixel crops (small,
    for CI time: the same code paths as a full-size model)."""
    path, sha = checkpoint
    write_test_model_file(folder / "model.toml", path, sha, calibration=None,
                          input_size=112, frames_per_video=4)
    return folder / "model.toml"


def _eval_args(dataset, out, model_file, *extra):
    return ["eval", str(dataset), "--out", str(out),
            "--set", f"model.config={model_file}", "--set", "model.device=cpu",
            "--set", "bank.enabled=false", "--set", "faces.min_face_size=40",
            "--set", "media.sandbox=false", *extra]  # in-process decoding, for CI time


def _eval(dataset, out, model_file, *extra):
    return main(_eval_args(dataset, out, model_file, *extra))


def _killed_after_first_video(dataset, out, model_file) -> int:
    """``python -m worker eval`` in a child process, SIGKILLed once a prediction is on disk;
    returns how many complete lines it left."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-m", "worker", *_eval_args(dataset, out, model_file)],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    predictions = out / "predictions.jsonl"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if predictions.exists() and predictions.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.02)
    finally:
        child.kill()
        _, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err.decode()[-2000:]
    return predictions.read_bytes().count(b"\n")


def _rows(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_eval_reports_figures_equal_to_sklearn_and_resumes(ffpp_dataset, random_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    model_file = _model_file(tmp_path, random_checkpoint)
    # A run killed hard (as by the OOM killer) after its first video, then resumed.
    left = _killed_after_first_video(ffpp_dataset, out, model_file)
    assert 1 <= left < 10
    assert _eval(ffpp_dataset, out, model_file, "--threshold", "strict=0.6") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["resumed"] == left and report["run"]["scored_now"] == 10 - left
    rows = _rows(out)
    assert sorted(r["path"] for r in rows) == sorted({r["path"] for r in rows})  # none twice

    assert report["dataset"]["layout"] == "faceforensics"
    assert report["videos"] == {"total": 10, "scored": 8, "no_faces": 1, "failed": 1, "in_video_metrics": 8}
    assert report["failed"][0]["path"].endswith("FaceSwap/c23/videos/009_000.mp4")
    assert report["no_faces"] == ["original_sequences/youtube/c23/videos/005.mp4"]
    assert report["model"]["checkpoint_sha256s"] == [random_checkpoint[1]]
    assert report["model"]["model_file"] == str(model_file.resolve())
    assert "video_level_calibrated" not in report  # the model file has no [calibration]
    assert {r["label"] for r in rows if "manipulated" in r["path"]} == {1}
    assert {r["label"] for r in rows if "original" in r["path"]} == {0}

    scored = [r for r in rows if r["status"] == "scored"]
    y = np.array([r["label"] for r in scored])
    s = np.array([r["video_score"] for r in scored])
    video = report["video_level"]
    assert video["auc"] == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
    assert video["average_precision"] == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)
    assert video["log_loss"] == pytest.approx(sk.log_loss(y, s), abs=1e-12)
    for name, t in (("takedown", 0.9), ("review", 0.5), ("strict", 0.6)):
        at = video["at_thresholds"][name]
        assert at["threshold"] == t
        assert at["recall"] == pytest.approx(sk.recall_score(y, s >= t, zero_division=0.0))
        assert at["precision"] == (sk.precision_score(y, s >= t) if (s >= t).any() else None)

    fy = np.array([r["label"] for r in scored for _ in r["face_scores"]])
    fs = np.array([v for r in scored for v in r["face_scores"]])
    assert len(fs) >= 8 * 3  # about one face in each of the 4 sampled frames
    frame = report["frame_level"]
    assert frame["count"] == len(fs)
    assert frame["auc"] == pytest.approx(sk.roc_auc_score(fy, fs), abs=1e-12)
    assert frame["average_precision"] == pytest.approx(sk.average_precision_score(fy, fs), abs=1e-12)
    # The video score is the pipeline's: the most suspicious track's mean face score.
    assert all(min(r["face_scores"]) - 1e-9 <= r["video_score"] <= max(r["face_scores"]) + 1e-9
               for r in scored)

    with Image.open(out / "roc.png") as png:
        assert png.format == "PNG" and png.size == (560, 560)
    assert "video_level" in capsys.readouterr().out

    # Killed while writing the 8th line: 7 lines and half of one remain; they are redone, now
    # with a calibration in the model file. The pipeline applies it, yet the predictions stay
    # raw (the verdict's raw_video_score) and keep their model key: nothing else is redone.
    lines = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    (out / "predictions.jsonl").write_text("".join(lines[:7]) + lines[7][:40])
    save_calibration(model_file, Calibration("temperature", takedown_threshold=0.6, review_threshold=0.5,
                                             temperature=0.5))
    assert _eval(ffpp_dataset, out, model_file, "--no-progress") == 0
    again = json.loads((out / "report.json").read_text())
    calibrated = again["video_level_calibrated"]
    assert calibrated["calibration"].startswith("temperature:T=0.5")
    s2 = np.array([r["video_score"] for r in _rows(out) if r["status"] == "scored"])
    sharpened = 1 / (1 + np.exp(-np.log(s2 / (1 - s2)) / 0.5))
    assert calibrated["at_thresholds"]["takedown"]["predicted_positive"] == int((sharpened >= 0.6).sum())
    assert again["run"] == {"scored_now": 3, "resumed": 7, "torn_last_line_dropped": True}
    after = _rows(out)
    assert len(after) == 10
    for before, now in zip(rows, after):  # same order: the torn line was rewritten last
        assert (before["path"], before["status"]) == (now["path"], now["status"])
        if before["status"] == "scored":  # the same model on the same frames scores the same
            assert now["video_score"] == pytest.approx(before["video_score"], abs=1e-5)
    assert again["video_level"]["auc"] == pytest.approx(video["auc"], abs=1e-9)

    # Ten videos cannot show 99 % takedown precision: calibrate refuses, nothing is written.
    save_calibration(model_file, None)
    before_text = model_file.read_text()
    assert main(["calibrate", str(out), "--model-file", str(model_file)]) == 2
    assert "refusing to calibrate" in capsys.readouterr().err
    assert model_file.read_text() == before_text
    _calibrate_then_the_worker_may_take_down(out, model_file, [r for r in after if r["status"] == "scored"],
                                             capsys)


def _calibrate_then_the_worker_may_take_down(out, model_file, scored, capsys):
    """A target these eight videos can meet (flagging all of them reaches precision 0.5):
    calibrate writes the table, the worker's loader reads back exactly what it printed, and
    the policy takes a video down only with that calibration."""
    capsys.readouterr()
    assert load_model_spec(model_file).calibration is None
    assert main(["calibrate", str(out), "--model-file", str(model_file), "--method", "isotonic",
                 "--target-precision", "0.5", "--target-recall", "0.5", "--confidence", "0"]) == 0
    printed = Calibration.from_mapping(tomllib.loads(capsys.readouterr().out)["calibration"])
    spec = load_model_spec(model_file)
    assert spec.calibration == printed
    assert spec.checkpoint_sha256s and spec.preprocessing.input_size == 112  # the rest is kept
    assert printed.validation["videos"] == len(scored) == 8

    policy = Policy()  # the [policy] defaults
    top = max(scored, key=lambda r: r["video_score"])
    for raw in (top["video_score"], 0.9999):
        track = FaceTrack(0, (Detection(0, 0.0, (0.0, 0.0, 50.0, 50.0), 1.0, score=raw),))
        uncalibrated = decide(policy, [track], model_loaded=True, calibration=None)
        assert uncalibrated.decision != TAKEDOWN
        if raw >= policy.takedown_threshold:
            assert (uncalibrated.decision, uncalibrated.reasons) == (REVIEW, (MODEL_UNCALIBRATED,))
    # The most suspicious video, calibrated, is at or above the fitted takedown threshold.
    track = FaceTrack(0, (Detection(0, 0.0, (0.0, 0.0, 50.0, 50.0), 1.0, score=top["video_score"]),))
    calibrated = decide(policy, [track], model_loaded=True, calibration=spec.calibration)
    assert calibrated.decision == TAKEDOWN and calibrated.raw_video_score == top["video_score"]
    assert calibrated.video_score == pytest.approx(printed.apply(top["video_score"]))


def test_eval_refuses_a_bad_layout_and_a_missing_model(tmp_path, random_checkpoint, capsys):
    (tmp_path / "clip.mp4").write_bytes(b"")
    assert _eval(tmp_path, tmp_path / "out", _model_file(tmp_path, random_checkpoint)) == 2
    assert "cannot tell the layout" in capsys.readouterr().err
    (tmp_path / "labels.csv").write_text("path,label\nclip.mp4,1\n")
    assert main(["eval", str(tmp_path), "--out", str(tmp_path / "out"), "--set", "model.device=cpu"]) == 2
    assert "needs a model" in capsys.readouterr().err
