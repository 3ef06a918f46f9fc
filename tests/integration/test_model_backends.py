"""The model-file backends on the CPU: timm and TorchScript networks, ensembles, the scorer's
numerics (fp32 on the CPU), and faces of several videos sharing one batch."""
from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

from worker.core.events import ModelInfo
from worker.models.batching import CrossVideoBatcher
from worker.models.checkpoint import CheckpointError, save_checkpoint, sha256_of
from worker.models.crops import face_crop
from worker.models.inference import FaceScorer, ModelOutputError
from worker.models.loading import load_detector_model
from worker.models.spec import Preprocessing, write_model_file
from worker.models.timm_backend import build_model

CPU = torch.device("cpu")
PRE = {"input_size": 64, "frames_per_video": 4}
FACES = [(0, (10.0, 12.0, 60.0, 70.0)), (1, (80.0, 20.0, 150.0, 110.0)), (2, (0.0, 0.0, 40.0, 30.0))]


class TinyNet(torch.nn.Module):
    """A small real CNN with one logit, for scripting."""

    def __init__(self, outputs: int = 1):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(3).integers(0, 255, (3, 120, 160, 3), dtype=np.uint8)


def scripted(tmp_path, net: torch.nn.Module, name: str = "tiny.pt"):
    path = tmp_path / name
    torch.jit.script(net.eval()).save(str(path))
    return path, sha256_of(path)


def torchscript_model(tmp_path, path, sha, **kw):
    return write_model_file(tmp_path / "ts.toml", name="tiny", version="1", backend="torchscript",
                            architecture="", checkpoints=[(path, sha)], preprocessing=PRE,
                            aggregation={"method": "mean"}, **kw)


def reference_scores(net: torch.nn.Module, frames, faces, pre) -> list[float]:
    """What the scorer must give: the published recipe in plain fp32 torch."""
    spec = Preprocessing(**pre)
    crops = np.stack([face_crop(frames[p], b, spec) for p, b in faces])
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.sigmoid(net.eval()(x)[:, 0]).tolist()


def test_a_torchscript_model_scores_like_its_eager_network_in_fp32(tmp_path, frames):
    torch.manual_seed(0)
    net = TinyNet()
    path, sha = scripted(tmp_path, net)
    scorer = load_detector_model(torchscript_model(tmp_path, path, sha), CPU, batch_size=2)
    [scores] = scorer.score(frames, FACES)  # two batches of 2 and 1
    assert scores == pytest.approx(reference_scores(net, frames, FACES, PRE), abs=1e-6)
    assert scorer.info.backend == "torchscript" and scorer.info.all_sha256s == (sha,)
    assert next(scorer.members[0].parameters()).dtype == torch.float32


def test_torchscript_sha256_is_checked_before_loading(tmp_path):
    path, _ = scripted(tmp_path, TinyNet())
    with pytest.raises(CheckpointError, match="sha256"):
        load_detector_model(torchscript_model(tmp_path, path, "0" * 64), CPU)
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a TorchScript file"):
        load_detector_model(torchscript_model(tmp_path, tmp_path / "junk.pt",
                                              sha256_of(tmp_path / "junk.pt")), CPU)


def test_a_network_with_two_outputs_is_refused_at_warm_up(tmp_path):
    path, sha = scripted(tmp_path, TinyNet(outputs=2))
    with pytest.raises(ModelOutputError, match="one logit per face"):
        load_detector_model(torchscript_model(tmp_path, path, sha), CPU)


def _biased_timm(tmp_path, name: str, bias: float):
    torch.manual_seed(0)
    model = build_model("efficientnet_b0")
    with torch.no_grad():
        model.get_classifier().weight.zero_()
        model.get_classifier().bias.fill_(bias)
    path = tmp_path / name
    return path, save_checkpoint(model, path, "efficientnet_b0", name)


def test_an_ensemble_scores_with_every_member_and_names_every_hash(tmp_path, frames):
    members = [_biased_timm(tmp_path, "plus.pt", 2.0), _biased_timm(tmp_path, "minus.pt", -1.0)]
    spec = write_model_file(tmp_path / "ens.toml", name="ens", version="1", backend="timm",
                            architecture="efficientnet_b0", checkpoints=members, preprocessing=PRE,
                            aggregation={"method": "mean"})
    scorer = load_detector_model(spec, CPU, batch_size=8)
    plus, minus = scorer.score(frames, FACES)
    assert plus == pytest.approx([1 / (1 + math.exp(-2.0))] * 3, abs=1e-6)
    assert minus == pytest.approx([1 / (1 + math.exp(1.0))] * 3, abs=1e-6)
    assert scorer.info.all_sha256s == tuple(sha for _, sha in members)
    assert scorer.info.checkpoint_sha256 == members[0][1]


def test_a_timm_model_runs_with_its_batch_norms_folded_and_scores_as_before(tmp_path, frames):
    torch.manual_seed(2)
    net = build_model("efficientnet_b0").eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # statistics far from a fresh network's, as a trained one has
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    path = tmp_path / "b0.pt"
    spec = write_model_file(tmp_path / "b0.toml", name="b0", version="1", backend="timm",
                            architecture="efficientnet_b0",
                            checkpoints=[(path, save_checkpoint(net, path, "efficientnet_b0", "b0"))],
                            preprocessing=PRE, aggregation={"method": "mean"})
    scorer = load_detector_model(spec, CPU, batch_size=8)
    assert scorer.folded_norms == 49
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in scorer.members[0].modules())
    [scores] = scorer.score(frames, FACES)
    assert scores == pytest.approx(reference_scores(net, frames, FACES, PRE), abs=1e-5)


def test_faces_of_videos_in_flight_share_batches(tmp_path, frames):
    torch.manual_seed(1)
    net = TinyNet()
    path, sha = scripted(tmp_path, net)
    scorer = load_detector_model(torchscript_model(tmp_path, path, sha), CPU, batch_size=64)
    batcher = CrossVideoBatcher(scorer, max_wait_s=0.5)
    videos = [[(i % 3, (5.0 * i, 4.0 * i, 5.0 * i + 50, 4.0 * i + 60))] * (i + 1) for i in range(4)]
    start = threading.Barrier(len(videos))
    results: dict[int, list] = {}

    def video(i):
        start.wait()
        results[i] = batcher.score(frames, videos[i])

    threads = [threading.Thread(target=video, args=(i,)) for i in range(len(videos))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    batcher.close()
    for i, faces in enumerate(videos):
        assert results[i][0] == pytest.approx(reference_scores(net, frames, faces, PRE), abs=1e-6)
    assert batcher.batches_run < len(videos)  # at least two videos went through together
    assert batcher.score(frames, []) == [[]]


class FailsOnThreeFaces(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 3:
            raise RuntimeError("device lost")
        return super().forward(x)


def test_a_failing_batch_fails_every_video_in_it_and_the_batcher_goes_on(frames):
    scorer = FaceScorer([FailsOnThreeFaces()], ModelInfo("flaky", "1", "0" * 64), Preprocessing(**PRE),
                        face_crop, CPU)
    batcher = CrossVideoBatcher(scorer)
    with pytest.raises(RuntimeError, match="device lost"):
        batcher.score(frames, FACES)
    assert len(batcher.score(frames, FACES[:2])[0]) == 2
    batcher.close()


def test_bf16_on_the_cpu_is_only_used_when_asked_for(frames):
    torch.manual_seed(0)
    net = TinyNet()
    info, pre = ModelInfo("tiny", "1", "0" * 64), Preprocessing(**PRE)
    reference = reference_scores(net, frames, FACES, PRE)
    [auto] = FaceScorer([net], info, pre, face_crop, CPU, precision="auto").score(frames, FACES)
    [fp32] = FaceScorer([net], info, pre, face_crop, CPU, precision="fp32").score(frames, FACES)
    [bf16] = FaceScorer([net], info, pre, face_crop, CPU, precision="bf16").score(frames, FACES)
    assert auto == pytest.approx(reference, abs=1e-6) and fp32 == pytest.approx(reference, abs=1e-6)
    assert bf16 == pytest.approx(reference, abs=1e-2)  # within bf16 rounding...
    assert bf16 != pytest.approx(reference, abs=1e-6)  # ...which shows: it did run in bf16
    with pytest.raises(ValueError, match="precision"):
        FaceScorer([net], info, pre, face_crop, CPU, precision="fp16")
