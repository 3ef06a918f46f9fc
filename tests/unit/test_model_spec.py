"""The model file: read, validated with errors that name the key, calibration written back."""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from worker.core.aggregation import Aggregation
from worker.core.calibration import Calibration
from worker.models.spec import ModelFileError, load_model_spec, save_calibration, write_model_file

SHA_A, SHA_B = "a" * 64, "b" * 64

WINNER = f"""# the DFDC winner, two of its seven checkpoints
name = "dfdc-winner-b7"
version = "2020-dfdc-final"
backend = "dfdc_winner"
architecture = "tf_efficientnet_b7_ns"

[[checkpoints]]
path = "weights/final_111_DeepFakeClassifier_tf_efficientnet_b7_ns_0_36"
sha256 = "{SHA_A.upper()}"

[[checkpoints]]
path = "/abs/final_555"
sha256 = "{SHA_B}"

[preprocessing]   # the winner's inference rules
frames_per_video = 32
input_size = 380
crop_margin = 0.3333333333333333
resize = "isotropic"
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
detector_scale = 0.5
detector_thresholds = [0.7, 0.8, 0.8]

[aggregation]
method = "confident_strategy"
threshold = 0.8
"""

CALIBRATION = """
[calibration]
method = "temperature"
temperature = 1.3
takedown_threshold = 0.97
review_threshold = 0.4
target_precision = 0.99
target_recall = 0.95

[calibration.validation]
dataset = "platform-val-2026-10"
videos = 1200
auc = 0.97
fitted_at = "2026-11-01T10:00:00Z"
"""


def write(tmp_path: Path, text: str, name: str = "model.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_winner_file_reads_with_paths_relative_to_it(tmp_path):
    spec = load_model_spec(write(tmp_path, WINNER))
    assert (spec.name, spec.version, spec.backend, spec.architecture) == (
        "dfdc-winner-b7", "2020-dfdc-final", "dfdc_winner", "tf_efficientnet_b7_ns")
    assert [c.path for c in spec.checkpoints] == [
        tmp_path / "weights" / "final_111_DeepFakeClassifier_tf_efficientnet_b7_ns_0_36", Path("/abs/final_555")]
    assert spec.checkpoint_sha256s == (SHA_A, SHA_B)  # lower-cased
    pre = spec.preprocessing
    assert (pre.frames_per_video, pre.input_size, pre.detector_scale) == (32, 380, 0.5)
    assert pre.detector_thresholds == (0.7, 0.8, 0.8) and pre.crop_margin == pytest.approx(1 / 3)
    assert spec.aggregation == Aggregation("confident_strategy", 0.8)
    assert spec.calibration is None and spec.source == tmp_path / "model.toml"


def test_a_calibration_table_is_the_calibration_contract(tmp_path):
    spec = load_model_spec(write(tmp_path, WINNER + CALIBRATION))
    assert spec.calibration == Calibration.from_mapping(tomllib.loads(CALIBRATION)["calibration"])
    assert spec.calibration.validation["videos"] == 1200


def test_defaults_for_a_minimal_timm_file(tmp_path):
    spec = load_model_spec(write(tmp_path, f"""
name = "ours"
version = "1"
backend = "timm"
architecture = "efficientnet_b0"
checkpoints = [{{path = "b0.pt", sha256 = "{SHA_A}"}}]
preprocessing = {{input_size = 224}}
aggregation = {{method = "mean"}}
"""))
    pre = spec.preprocessing
    assert (pre.frames_per_video, pre.resize, pre.mean, pre.std) == (
        32, "isotropic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert spec.aggregation.method == "mean"


@pytest.mark.parametrize("change,message", [
    (('backend = "dfdc_winner"', 'backend = "onnx"'), "backend must be one of"),
    (('architecture = "tf_efficientnet_b7_ns"', ''), "needs an architecture"),
    ((f'sha256 = "{SHA_B}"', 'sha256 = "abc"'), r"#2 needs sha256, 64 hex"),
    ((f'sha256 = "{SHA_B}"', ''), r"#2 needs sha256"),
    (('path = "/abs/final_555"', 'file = "/abs/final_555"'), r"unknown key\(s\) in \[\[checkpoints\]\] #2: file"),
    (('input_size = 380', 'input_size = 380.5'), "input_size must be an integer"),
    (('input_size = 380', ''), "input_size is required"),
    (('frames_per_video = 32', 'frames_per_video = 0'), "frames_per_video must be at least 1"),
    (('resize = "isotropic"', 'resize = "stretch"'), "resize must be one of"),
    (('std = [0.229, 0.224, 0.225]', 'std = [0.229, 0.224]'), "std must be a list of three numbers"),
    (('detector_scale = 0.5', 'detector_scale = 2'), r"detector_scale must be in \(0, 1\]"),
    (('method = "confident_strategy"', 'method = "median"'), "aggregation.method must be one of"),
    (('threshold = 0.8', 'threshold = 1.8'), "threshold must lie in"),
    (('name = "dfdc-winner-b7"', 'name = ""'), "name must be a non-empty string"),
    (('version = "2020-dfdc-final"', 'version = "x"\nowner = "me"'), r"unknown key\(s\) in the top level: owner"),
])
def test_a_bad_file_is_refused_naming_what_is_wrong(tmp_path, change, message):
    old, new = change
    assert old in WINNER
    path = write(tmp_path, WINNER.replace(old, new))
    with pytest.raises(ModelFileError, match=message) as info:
        load_model_spec(path)
    assert str(path) in str(info.value)


def test_no_checkpoints_no_aggregation_bad_calibration_not_toml_missing(tmp_path):
    no_checkpoints = "\n".join(line for line in WINNER.splitlines()
                               if not line.startswith(("[[checkpoints", "path", "sha256")))
    with pytest.raises(ModelFileError, match=r"at least one \[\[checkpoints\]\]"):
        load_model_spec(write(tmp_path, no_checkpoints))
    with pytest.raises(ModelFileError, match=r"needs an \[aggregation\] table"):
        load_model_spec(write(tmp_path, WINNER.split("[aggregation]")[0]))
    with pytest.raises(ModelFileError, match=r"\[calibration\]: calibration thresholds"):
        load_model_spec(write(tmp_path, WINNER + CALIBRATION.replace("review_threshold = 0.4", "review_threshold = 0.99")))
    with pytest.raises(ModelFileError, match="not TOML"):
        load_model_spec(write(tmp_path, "name = \n"))
    with pytest.raises(ModelFileError, match="cannot read model file"):
        load_model_spec(tmp_path / "absent.toml")


def test_save_calibration_adds_replaces_and_removes_keeping_the_rest(tmp_path):
    path = write(tmp_path, WINNER)
    first = Calibration("temperature", 0.97, 0.4, temperature=1.3, target_precision=0.99,
                        validation={"dataset": "val", "videos": 10, "auc": 0.9})
    save_calibration(path, first)
    assert load_model_spec(path).calibration == first
    assert "# the winner's inference rules" in path.read_text()  # comments are kept
    second = Calibration("isotonic", 0.9, 0.3, isotonic_x=(0.1, 0.5, 0.9), isotonic_y=(0.0, 0.6, 1.0))
    save_calibration(path, second)
    spec = load_model_spec(path)
    assert spec.calibration == second and spec.checkpoint_sha256s == (SHA_A, SHA_B)
    assert path.read_text().count("[calibration]") == 1 and "[calibration.validation]" not in path.read_text()
    save_calibration(path, None)
    assert load_model_spec(path).calibration is None
    untouched = load_model_spec(write(tmp_path, WINNER, "again.toml"))
    assert load_model_spec(path) == dataclasses.replace(untouched, source=path)


def test_a_calibration_in_the_middle_of_the_file_is_replaced_in_place_of_the_old(tmp_path):
    head, tail = WINNER.split("[preprocessing]")
    path = write(tmp_path, head + CALIBRATION + "\n[preprocessing]" + tail)
    new = Calibration("temperature", 0.95, 0.5, temperature=0.8)
    save_calibration(path, new)
    spec = load_model_spec(path)
    assert spec.calibration == new and spec.preprocessing.input_size == 380


def test_save_calibration_refuses_a_broken_file(tmp_path):
    path = write(tmp_path, WINNER.replace('backend = "dfdc_winner"', 'backend = "nope"'))
    before = path.read_text()
    with pytest.raises(ModelFileError):
        save_calibration(path, Calibration("temperature", 0.9, 0.5))
    assert path.read_text() == before


def test_write_model_file_round_trips(tmp_path):
    calibration = Calibration("temperature", 0.97, 0.4, temperature=1.3)
    spec = write_model_file(tmp_path / "m.toml", name="ours", version="3", backend="timm",
                            architecture="efficientnet_b0",
                            checkpoints=[(tmp_path / "w" / "a.pt", SHA_A), ("/elsewhere/b.pt", SHA_B)],
                            preprocessing={"input_size": 224, "frames_per_video": 8},
                            aggregation={"method": "mean"}, calibration=calibration)
    assert 'path = "w/a.pt"' in (tmp_path / "m.toml").read_text()
    assert [c.path for c in spec.checkpoints] == [tmp_path / "w" / "a.pt", Path("/elsewhere/b.pt")]
    assert spec.calibration == calibration and spec.preprocessing.frames_per_video == 8
