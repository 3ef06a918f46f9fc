"""The DFDC winner's checkpoint format: our model has exactly its keys and shapes, and a file
in its published layout loads strictly; anything else is refused by name.

The expected format is data (tests/data/dfdc_b7_state_dict.json), derived from the peer's
model definition and timm's published EfficientNet-B7 definition without importing timm or
our model (tests/data/derive_dfdc_b7_state_dict.py says where each fact comes from).
"""
from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from worker.models.checkpoint import CheckpointError, sha256_of
from worker.models.dfdc import DeepFakeClassifier, fake_probabilities, load_winner_checkpoint

DATA = Path(__file__).parent.parent / "data"
FORMAT = json.loads((DATA / "dfdc_b7_state_dict.json").read_text())
B7_TIMM_PARAMS = 66_347_960  # timm's tf_efficientnet_b7, published as 66.35M
SMALL = "tf_efficientnet_b0_ns"


@pytest.fixture(scope="module")
def b7() -> DeepFakeClassifier:
    torch.manual_seed(0)
    return DeepFakeClassifier().eval()


@pytest.fixture(scope="module")
def small() -> DeepFakeClassifier:
    torch.manual_seed(0)
    return DeepFakeClassifier(SMALL).eval()


def _published_layout(state: dict[str, torch.Tensor], path: Path, numpy1: bool = False) -> str:
    """As train_classifier.py saved it (torch 1.4: the legacy, non-zip format), with
    ``bce_best`` a numpy float64; ``numpy1`` writes numpy 1.x's module name for the scalar."""
    buffer = io.BytesIO()
    torch.save({"epoch": 37, "state_dict": {f"module.{k}": v for k, v in state.items()},
                "bce_best": np.float64(0.1937)}, buffer, _use_new_zipfile_serialization=False)
    raw = buffer.getvalue()
    if numpy1:
        name = b"numpy._core.multiarray\nscalar"
        assert raw.count(name) == 1
        raw = raw.replace(name, b"numpy.core.multiarray\nscalar")
    path.write_bytes(raw)
    return sha256_of(path)


def test_recorded_format_is_what_the_derivation_gives():
    spec = importlib.util.spec_from_file_location("derive", DATA / "derive_dfdc_b7_state_dict.py")
    derive = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(derive)
    assert derive.derive() == FORMAT
    assert FORMAT["parameter_count"] == B7_TIMM_PARAMS + 2560 + 1
    assert round(B7_TIMM_PARAMS / 1e6, 2) == 66.35


def test_b7_state_dict_has_exactly_the_published_keys_and_shapes(b7):
    ours = {k: list(v.shape) for k, v in b7.state_dict().items()}
    published = {k: shape for k, shape in FORMAT["tensors"]}
    assert len(published) == len(FORMAT["tensors"]) == 1202
    assert sorted(set(ours) - set(published)) == []
    assert sorted(set(published) - set(ours)) == []
    assert {k: s for k, s in ours.items() if published[k] != s} == {}
    assert sum(p.numel() for p in b7.parameters()) == FORMAT["parameter_count"]


def test_published_b7_layout_loads_strictly(b7, tmp_path):
    state = {k: v.clone() for k, v in b7.state_dict().items()}
    generator = torch.Generator().manual_seed(7)
    for key in ("fc.weight", "encoder.conv_stem.weight", "encoder.blocks.6.3.bn3.running_var"):
        state[key] = torch.rand(state[key].shape, generator=generator)
    state["encoder.bn2.num_batches_tracked"] = torch.tensor(123456)
    path = tmp_path / "final_111_DeepFakeClassifier_tf_efficientnet_b7_ns_0_36"
    sha = _published_layout(state, path, numpy1=True)

    loaded = load_winner_checkpoint(b7, path, sha)
    assert loaded.sha256 == sha
    now = b7.state_dict()
    for key, tensor in state.items():
        assert torch.equal(now[key], tensor), key


def test_forward_is_pool_dropout_fc_over_encoder_features(small):
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        logits = small(x)
        pooled = small.encoder.forward_features(x).mean(dim=(2, 3))
        expected = pooled @ small.fc.weight.T + small.fc.bias
        probabilities = fake_probabilities(small, x)
    assert logits.shape == (2, 1)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(probabilities, torch.sigmoid(expected[:, 0]), rtol=1e-5, atol=1e-6)
    assert small.fc.in_features == small.encoder.num_features


def _refused(model, state, tmp_path, match):
    path = tmp_path / "bad.pt"
    sha = _published_layout(state, path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=match):
        load_winner_checkpoint(model, path, sha)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing half-loaded


def test_missing_key_is_refused(small, tmp_path):
    state = dict(small.state_dict())
    del state["encoder.classifier.bias"]
    state["fc.bias"] = state["fc.bias"] + 1
    _refused(small, state, tmp_path, r"missing \(1\): encoder\.classifier\.bias")


def test_extra_key_is_refused(small, tmp_path):
    state = dict(small.state_dict())
    state["srm_conv.weight"] = torch.zeros(3, 3, 5, 5)  # the winner's SRM variant has this
    state["fc.bias"] = state["fc.bias"] + 1
    _refused(small, state, tmp_path, r"unexpected \(1\): srm_conv\.weight")


def test_misshaped_key_is_refused(small, tmp_path):
    state = dict(small.state_dict())
    state["fc.weight"] = torch.zeros(1, 2560)  # a B7 head on a B0
    _refused(small, state, tmp_path, r"misshaped \(1\): fc\.weight \(1, 2560\) != \(1, 1280\)")


def test_wrong_sha256_is_refused_before_unpickling(small, tmp_path):
    path = tmp_path / "c.pt"
    _published_layout(dict(small.state_dict()), path)
    with pytest.raises(CheckpointError, match="sha256"):
        load_winner_checkpoint(small, path, "0" * 64)


class _Payload:
    """Stands for any pickled object beyond tensors, containers and numpy scalars."""


def test_other_pickled_objects_are_still_refused(tmp_path):
    path = tmp_path / "code.pt"
    torch.save({"state_dict": {"fc.bias": torch.zeros(1)}, "bce_best": _Payload()}, path)
    unbuilt = DeepFakeClassifier.__new__(DeepFakeClassifier)  # refused before the model is used
    with pytest.raises(CheckpointError, match="as a weights-only torch file: .*_Payload"):
        load_winner_checkpoint(unbuilt, path, sha256_of(path))
