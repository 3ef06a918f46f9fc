"""The evaluation loop with the in-memory scorer: failures counted, interruption and resume,
torn lines, the report from the predictions file, and ``calibrate`` on a predictions file."""
import json
import tomllib

import numpy as np
import pytest
from sklearn import metrics as sk

from worker.__main__ import main
from worker.core.calibration import Calibration
from worker.core.dead_letters import CORRUPT_VIDEO, DeadLetter
from worker.evaluation.datasets import Dataset, LabelledVideo
from worker.evaluation.predictions import (FAILED, NO_FACES, SCORED, PredictionLog, VideoPrediction,
                                           read_predictions)
from worker.evaluation.report import build_report
from worker.evaluation.run import PREDICTIONS_FILE, evaluate
from worker.models.spec import load_model_spec
from worker.testing.fakes import FakeVideoScorer

TABLE = {"r1.mp4": 0.1, "r2.mp4": 0.4, "r3.mp4": 0.35, "f1.mp4": 0.8, "f2.mp4": 0.35, "f3.mp4": 0.9,
         "broken.mp4": DeadLetter(CORRUPT_VIDEO, "moov atom not found"), "empty.mp4": None}
LABELS = {"r1.mp4": 0, "r2.mp4": 0, "r3.mp4": 0, "f1.mp4": 1, "f2.mp4": 1, "f3.mp4": 1,
          "broken.mp4": 1, "empty.mp4": 0}


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    videos = tuple(LabelledVideo(root / name, f"clips/{name}", label, group=name[0])
                   for name, label in LABELS.items())
    return Dataset(root, "csv", videos)


def test_every_video_gets_a_line_and_failures_are_not_fatal(dataset, tmp_path):
    run = evaluate(dataset, FakeVideoScorer(TABLE), tmp_path / "out", progress=False)
    assert run.scored_now == 8
    status = {k: p.status for k, p in run.predictions.items()}
    assert status["clips/broken.mp4"] == FAILED and status["clips/empty.mp4"] == NO_FACES
    assert sum(s == SCORED for s in status.values()) == 6
    lines = read_predictions(tmp_path / "out" / PREDICTIONS_FILE).predictions
    assert [p.key for p in lines] == [v.key for v in dataset.videos]
    broken = run.predictions["clips/broken.mp4"]
    assert (broken.reason, broken.message) == (CORRUPT_VIDEO, "moov atom not found")


def test_interrupted_run_resumes_with_the_videos_not_done(dataset, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        evaluate(dataset, FakeVideoScorer(TABLE, interrupt_after=3), out, progress=False)
    assert len(read_predictions(out / PREDICTIONS_FILE).predictions) == 3
    second = FakeVideoScorer(TABLE)
    run = evaluate(dataset, second, out, progress=False)
    assert second.calls == [v.path.name for v in dataset.videos[3:]]
    assert run.scored_now == 5 and len(run.predictions) == 8
    third = FakeVideoScorer(TABLE)
    evaluate(dataset, third, out, progress=False)
    assert third.calls == []  # everything done
    assert len(read_predictions(out / PREDICTIONS_FILE).predictions) == 8


def test_a_torn_last_line_is_dropped_and_its_video_redone(dataset, tmp_path):
    out = tmp_path / "out"
    evaluate(Dataset(dataset.root, "csv", dataset.videos[:2]), FakeVideoScorer(TABLE), out, progress=False)
    whole = (out / PREDICTIONS_FILE).read_text()
    third = VideoPrediction("clips/r3.mp4", 0, "fake-sha+settings", SCORED, 0.35, (0.35,), (0,), 1).to_json()
    (out / PREDICTIONS_FILE).write_text(whole + third[: len(third) // 2])  # killed mid-write
    back = read_predictions(out / PREDICTIONS_FILE)
    assert back.torn_last_line and len(back.predictions) == 2
    scorer = FakeVideoScorer(TABLE)
    run = evaluate(dataset, scorer, out, progress=False)
    assert run.torn_last_line and scorer.calls[0] == "r3.mp4" and len(scorer.calls) == 6
    back = read_predictions(out / PREDICTIONS_FILE)
    assert not back.torn_last_line and len(back.predictions) == 8


def test_a_bad_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / PREDICTIONS_FILE
    good = VideoPrediction("a.mp4", 0, "m", SCORED, 0.2).to_json()
    path.write_text(f"{good}\nnot json\n{good}\n")
    with pytest.raises(ValueError, match=f"{PREDICTIONS_FILE}:2"):
        read_predictions(path)


def test_predictions_of_another_model_are_not_reused(dataset, tmp_path):
    evaluate(dataset, FakeVideoScorer(TABLE), tmp_path / "out", progress=False)
    other = FakeVideoScorer(TABLE, model_key="other-sha+settings")
    evaluate(dataset, other, tmp_path / "out", progress=False)
    assert len(other.calls) == 8
    assert len(read_predictions(tmp_path / "out" / PREDICTIONS_FILE).predictions) == 16


def test_report_figures_equal_sklearn_on_the_predictions_file(dataset, tmp_path):
    run = evaluate(dataset, FakeVideoScorer(TABLE), tmp_path / "out", progress=False)
    predictions = [run.predictions[v.key] for v in dataset.videos]
    report = build_report(predictions, {"takedown": 0.8, "review": 0.35}, {"root": "x"}, {"name": "fake"})
    rows = [json.loads(line) for line in (tmp_path / "out" / PREDICTIONS_FILE).read_text().splitlines()]
    scored = [r for r in rows if r["status"] == "scored"]
    y = [r["label"] for r in scored]
    s = [r["video_score"] for r in scored]
    video = report["video_level"]
    assert video["auc"] == pytest.approx(sk.roc_auc_score(y, s))  # 0.35 is tied across classes
    assert video["average_precision"] == pytest.approx(sk.average_precision_score(y, s))
    assert video["log_loss"] == pytest.approx(sk.log_loss(y, s))
    assert video["at_thresholds"]["review"]["recall"] == pytest.approx(
        sk.recall_score(y, np.array(s) >= 0.35))
    fy = [r["label"] for r in scored for _ in r["face_scores"]]
    fs = [v for r in scored for v in r["face_scores"]]
    assert report["frame_level"]["count"] == 12
    assert report["frame_level"]["auc"] == pytest.approx(sk.roc_auc_score(fy, fs))
    assert report["videos"] == {"total": 8, "scored": 6, "no_faces": 1, "failed": 1, "in_video_metrics": 6}
    assert report["failed"] == [{"path": "clips/broken.mp4", "reason": CORRUPT_VIDEO,
                                 "message": "moov atom not found"}]
    assert report["no_faces"] == ["clips/empty.mp4"]
    with_empty = build_report(predictions, {}, {}, {}, no_face_score=0.5)
    assert with_empty["video_level"]["count"] == 7


def test_report_of_one_class_says_why_figures_are_missing():
    preds = [VideoPrediction(f"{i}.mp4", 0, "m", SCORED, 0.1 * i, (0.1 * i,), (0,), 1) for i in range(3)]
    report = build_report(preds, {"t": 0.5}, {}, {})
    assert report["video_level"]["auc"] is None and report["video_level"]["notes"]
    assert report["video_level"]["log_loss"] is not None


# ---- calibrate, from a predictions file to the model file's [calibration] table ---------

SHA = "ab" * 32
MODEL_TOML = f"""name = "test-model"
version = "v1"
backend = "timm"
architecture = "efficientnet_b0"

[[checkpoints]]
path = "model.pt"
sha256 = "{SHA}"

[preprocessing]
input_size = 112
frames_per_video = 8

[aggregation]
method = "mean"
"""


def _write_predictions(path, labels, scores, model=f"{SHA}+0123456789ab"):
    log = PredictionLog(path)
    for i, (label, score) in enumerate(zip(labels, scores)):
        log.append(VideoPrediction(f"v{i}.mp4", int(label), model, SCORED, float(score), (float(score),), (0,), 1))


def _separable(n=400, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    z = rng.normal(0, 1, n) + 4 * (labels - 0.5)
    return labels, 1 / (1 + np.exp(-z))


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_calibrate_writes_the_table_into_the_model_file(tmp_path, capsys, method):
    labels, scores = _separable()
    _write_predictions(tmp_path / "out" / PREDICTIONS_FILE, labels, scores)
    model_file = tmp_path / "model.toml"
    model_file.write_text(MODEL_TOML)
    code = main(["calibrate", str(tmp_path / "out"), "--model-file", str(model_file), "--method", method,
                 "--target-precision", "0.97", "--target-recall", "0.9"])
    assert code == 0
    document = tomllib.loads(model_file.read_text())
    assert document["checkpoints"] == [{"path": "model.pt", "sha256": SHA}]  # the rest is kept
    assert document["preprocessing"] == {"input_size": 112, "frames_per_video": 8}
    cal = Calibration.from_mapping(document["calibration"])
    assert cal == Calibration.from_mapping(tomllib.loads(capsys.readouterr().out)["calibration"])
    assert load_model_spec(model_file).calibration == cal  # what the worker will load
    calibrated = np.array([cal.apply(s) for s in scores])
    assert np.mean(labels[calibrated >= cal.takedown_threshold]) >= 0.97
    assert labels[calibrated >= cal.review_threshold].sum() >= 0.9 * labels.sum()
    assert cal.validation["videos"] == 400 and cal.target_precision == 0.97


def test_calibrate_refuses_unreachable_precision_and_leaves_the_file(tmp_path, capsys):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = rng.random(300)  # no signal: no threshold reaches 0.99
    _write_predictions(tmp_path / PREDICTIONS_FILE, labels, scores)
    model_file = tmp_path / "model.toml"
    model_file.write_text(MODEL_TOML)
    assert main(["calibrate", str(tmp_path / PREDICTIONS_FILE), "--model-file", str(model_file)]) == 2
    assert "no threshold reaches precision 0.99" in capsys.readouterr().err
    assert model_file.read_text() == MODEL_TOML


def test_calibrate_refuses_predictions_of_another_checkpoint(tmp_path, capsys):
    labels, scores = _separable()
    _write_predictions(tmp_path / PREDICTIONS_FILE, labels, scores, model="cd" * 32 + "+0123456789ab")
    model_file = tmp_path / "model.toml"
    model_file.write_text(MODEL_TOML)
    assert main(["calibrate", str(tmp_path), "--model-file", str(model_file)]) == 2
    assert "pins others" in capsys.readouterr().err
    _write_predictions(tmp_path / PREDICTIONS_FILE, labels, scores)  # now two models in the file
    assert main(["calibrate", str(tmp_path)]) == 2
    assert "--model-key" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path), "--model-key", f"{SHA}+0123456789ab",
                 "--target-precision", "0.95"]) == 0


def test_report_with_a_calibration_adds_calibrated_figures_at_its_thresholds():
    preds = [VideoPrediction(f"{i}.mp4", i % 2, "m", SCORED, s, (s,), (0,), 1)
             for i, s in enumerate([0.2, 0.7, 0.4, 0.9, 0.6, 0.55])]
    cal = Calibration("temperature", takedown_threshold=0.8, review_threshold=0.5, temperature=2.0)
    report = build_report(preds, {"takedown": 0.9}, {}, {}, calibration=cal)
    calibrated = [cal.apply(p.video_score) for p in preds]
    figures = report["video_level_calibrated"]
    assert figures["calibration"] == cal.version
    assert figures["log_loss"] == pytest.approx(sk.log_loss([p.label for p in preds], calibrated))
    assert figures["auc"] == report["video_level"]["auc"]  # a monotone map keeps the ranking
    at = figures["at_thresholds"]["takedown"]
    assert at["threshold"] == 0.8 and at["predicted_positive"] == sum(c >= 0.8 for c in calibrated)


def test_model_key_names_every_checkpoint_and_changes_with_the_settings():
    from worker.evaluation.run import key_checkpoints, model_key

    key = model_key(("a" * 64, "b" * 64), {"frames_per_video": 32})
    assert key_checkpoints(key) == ("a" * 64, "b" * 64)
    assert key != model_key(("a" * 64, "b" * 64), {"frames_per_video": 16})
    assert key == model_key(("a" * 64, "b" * 64), {"frames_per_video": 32})


def test_scoring_settings_follow_the_model_file_and_faces_not_the_runtime(tmp_path):
    """What changes raw scores (preprocessing, aggregation, backend, [faces]) changes the
    key; device, batch size and the calibration do not."""
    from worker.config import load_config
    from worker.evaluation.commands import scoring_settings
    from worker.models.spec import save_calibration

    model_file = tmp_path / "model.toml"
    model_file.write_text(MODEL_TOML)

    def settings(text=None, *overrides):
        if text is not None:
            model_file.write_text(text)
        return scoring_settings(load_config(env={}, overrides=[f"model.config={model_file}", *overrides]))

    base = settings()
    assert base["preprocessing"]["input_size"] == 112 and base["aggregation"]["method"] == "mean"
    assert settings(None, "model.device=cpu", "model.batch_size=3") == base
    save_calibration(model_file, Calibration("temperature", takedown_threshold=0.9, review_threshold=0.5,
                                             temperature=2.0))
    assert settings() == base
    assert settings(MODEL_TOML.replace("frames_per_video = 8", "frames_per_video = 16")) != base
    assert settings(MODEL_TOML.replace('method = "mean"', 'method = "max"')) != base
    assert settings(MODEL_TOML.replace("input_size = 112", "input_size = 224")) != base
    assert settings(MODEL_TOML, "faces.min_face_size=60") != base


def test_calibrate_refuses_a_broken_model_file_and_leaves_it(tmp_path, capsys):
    labels, scores = _separable()
    _write_predictions(tmp_path / PREDICTIONS_FILE, labels, scores)
    model_file = tmp_path / "model.toml"
    broken = MODEL_TOML.replace('backend = "timm"', 'backend = "onnx"')
    model_file.write_text(broken)
    assert main(["calibrate", str(tmp_path), "--model-file", str(model_file)]) == 2
    assert "ModelFileError" in capsys.readouterr().err and model_file.read_text() == broken
