"""The DFDC winner's backend end to end on the real broker: an upload event in, a takedown
verdict out that names the model and its checkpoint hash.

The checkpoint is made by the test in the published layout (``{'epoch', 'state_dict',
'bce_best'}``, keys prefixed ``module.``, ``bce_best`` a numpy float as scikit-learn left
it), from a real B7 ``DeepFakeClassifier`` whose ``fc`` ignores the features and outputs a
known logit, so the score the worker must report is known. Four frames keep the B7 (about a
second per face on a CPU core) affordable; everything else is the winner's recipe.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from worker.app import build_pipeline
from worker.core.calibration import Calibration
from worker.core.events import upload_event, validator
from worker.models.checkpoint import sha256_of
from worker.models.dfdc import DeepFakeClassifier
from worker.models.spec import write_model_file
from worker.testing.samples import sample_video

from .conftest import publish, read_outputs, running_worker

pytestmark = pytest.mark.kafka

LOGIT = 4.0
WINNER_PREPROCESSING = {"frames_per_video": 4, "input_size": 380, "crop_margin": 1 / 3,
                        "resize": "isotropic", "mean": [0.485, 0.456, 0.406],
                        "std": [0.229, 0.224, 0.225], "detector_scale": 0.5,
                        "detector_thresholds": [0.7, 0.8, 0.8]}


@pytest.fixture(scope="module")
def winner_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = DeepFakeClassifier(encoder="tf_efficientnet_b7_ns")
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.fill_(LOGIT)
    path = tmp_path_factory.mktemp("dfdc") / "final_111_DeepFakeClassifier_tf_efficientnet_b7_ns_0_36"
    torch.save({"epoch": 36, "bce_best": np.float64(0.1932),
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path, sha256_of(path)


def test_the_dfdc_winner_backend_takes_down_a_video_through_kafka(kafka_config, winner_checkpoint):
    path, sha = winner_checkpoint
    calibration = Calibration("temperature", takedown_threshold=0.97, review_threshold=0.4,
                              temperature=0.8, target_precision=0.99, target_recall=0.95,
                              validation={"dataset": "none: a test fixture"})
    write_model_file(path.parent / "dfdc-winner.toml", name="dfdc-winner-b7", version="test-fc-bias",
                     backend="dfdc_winner", architecture="tf_efficientnet_b7_ns",
                     checkpoints=[(path, sha)], preprocessing=WINNER_PREPROCESSING,
                     aggregation={"method": "confident_strategy", "threshold": 0.8},
                     calibration=calibration)
    cfg = kafka_config.replace(model={"config": str(path.parent / "dfdc-winner.toml"), "device": "cpu",
                                      "batch_size": 8})
    pipeline = build_pipeline(cfg)
    uri = sample_video("carphone_pristine.mp4").as_uri()
    publish(cfg, [(b"carphone", upload_event("carphone", uri, "tester", event_id="evt-dfdc"))])
    with running_worker(cfg, pipeline):
        outputs = read_outputs(cfg, expected=1)

    assert [topic for topic, _, _ in outputs] == [cfg.kafka.verdict_topic]
    record = outputs[0][2]
    validator("verdict").validate(record)
    data = record["data"]
    raw = 1 / (1 + math.exp(-LOGIT))  # 0.982; calibrated (T = 0.8): 0.993
    assert (data["decision"], data["reasons"]) == ("takedown", ["score_at_or_above_takedown_threshold"])
    assert data["raw_video_score"] == pytest.approx(raw, abs=1e-3)
    assert data["video_score"] == pytest.approx(calibration.apply(raw), abs=1e-3)
    assert data["model"]["name"] == "dfdc-winner-b7" and data["model"]["backend"] == "dfdc_winner"
    assert data["model"]["checkpoint_sha256"] == sha and data["model"]["checkpoint_sha256s"] == [sha]
    assert data["model"]["aggregation"] == "confident_strategy(t=0.8)"
    assert data["policy_version"] == "calibrated-v1:" + calibration.version
    assert data["frames_sampled"] == 4 and data["face_count"] >= 3
    decisive = [t for t in data["tracks"] if t["track_id"] == data["decisive_track_id"]]
    assert len(decisive) == 1 and decisive[0]["score"] == pytest.approx(raw, abs=1e-3)
    # the winner's integer boxes, in frame pixels of the 176 x 144 clip
    assert all(float(c).is_integer() for d in decisive[0]["detections"] for c in d["box"])
