"""The checkpoint contract: pinned sha256 first, then a strict load of a real timm model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from worker.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, sha256_of
from worker.models.loading import load_detector_model
from worker.models.spec import write_model_file
from worker.models.timm_backend import build_model, networks

ARCH = "efficientnet_b0"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return build_model(ARCH)


def _spec(path, sha):
    return write_model_file(path.parent / "model.toml", name="b0", version="test", backend="timm",
                            architecture=ARCH, checkpoints=[(path, sha)],
                            preprocessing={"input_size": 96}, aggregation={"method": "mean"})


def _classifier(path, sha):
    return load_detector_model(_spec(path, sha), torch.device("cpu"), batch_size=4)


def test_sha256_mismatch_is_refused_before_loading(tmp_path, model):
    path = tmp_path / "c.pt"
    save_checkpoint(model, path, ARCH, "v1")
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path, "0" * 64)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt", "0" * 64)


def test_dfdc_layout_with_module_prefix_loads_strictly(tmp_path, model):
    path = tmp_path / "dfdc.pt"
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": state, "bce_best": 0.2}, path)
    classifier = _classifier(path, sha256_of(path))
    assert classifier.info.version == "test"  # the model file's, not the checkpoint's
    assert classifier.info.checkpoint_sha256 == sha256_of(path)
    # the backend's network as loaded (the scorer runs it with its batch norms folded)
    [network] = networks(_spec(path, sha256_of(path)))
    loaded = network.state_dict()
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded[key], tensor), key


def test_bare_state_dict_and_scores_in_unit_interval(tmp_path, model):
    path = tmp_path / "bare.pt"
    torch.save(model.state_dict(), path)
    classifier = _classifier(path, sha256_of(path))
    frames = np.random.default_rng(0).integers(0, 255, (2, 120, 160, 3), dtype=np.uint8)
    [scores] = classifier.score(frames, [(0, (10, 10, 60, 70)), (1, (100, 20, 150, 110))])
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    # Same crop, same score: inference is deterministic in eval mode.
    assert classifier.score(frames, [(0, (10, 10, 60, 70))])[0][0] == pytest.approx(scores[0], abs=1e-6)


def test_checkpoint_for_another_architecture_is_refused(tmp_path):
    other = build_model("resnet18")
    path = tmp_path / "resnet.pt"
    sha = save_checkpoint(other, path, "resnet18", "v1")
    with pytest.raises(CheckpointError, match="resnet18"):
        _classifier(path, sha)
    torch.save({"state_dict": other.state_dict()}, path)  # no architecture recorded
    with pytest.raises(CheckpointError, match="does not fit"):
        _classifier(path, sha256_of(path))


def test_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "junk.pt"
    torch.save({"state_dict": "nope"}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path, sha256_of(path))
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="no state dict"):
        load_checkpoint(path, sha256_of(path))
