"""Batch norms folded into convolutions: only where the data flow allows it, within float
rounding of the original network, and the original left as it was."""
import timm
import torch
from torch import nn

from worker.models.folding import _foldable_pairs, _NormsAsLeaves, fold_batch_norms


def randomised_norms(network: nn.Module, seed: int = 0) -> nn.Module:
    """Batch norms with statistics and affine parameters far from the identity, so that a
    fold done wrong shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in network.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5, generator=g)
                m.running_var.uniform_(0.3, 3.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.5, generator=g)
    return network.eval()


def sample(size: int = 32, n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 4 - 2


def norms(network: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in network.modules())


def test_efficientnet_b0_folds_every_norm_within_float_rounding_and_keeps_the_original():
    network = randomised_norms(timm.create_model("efficientnet_b0", pretrained=False, num_classes=1))
    x = sample(64)
    with torch.inference_mode():
        expected = network(x)
    folded, folds = fold_batch_norms(network, x)
    assert folds == 49 and norms(folded) == 0
    with torch.inference_mode():
        assert torch.allclose(folded(x), expected, rtol=1e-4, atol=1e-4)
        other = sample(64, n=3) * 0.5  # not the batch the fold was checked on
        assert torch.allclose(folded(other), network(other), rtol=1e-4, atol=1e-4)
        assert torch.equal(network(x), expected)  # the original is untouched
    assert norms(network) == 49


def test_tf_same_padding_convolutions_fold_too():
    network = randomised_norms(timm.create_model("tf_efficientnet_b0", pretrained=False, num_classes=1))
    folded, folds = fold_batch_norms(network, sample(64))
    assert folds == 49 and norms(folded) == 0


class ConvThenNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(x))


class SharedOutput(ConvThenNorm):
    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y  # the convolution's output is read twice: no fold


class NormBeforeConv(ConvThenNorm):
    def forward(self, x):  # registered conv then bn, applied the other way round
        return self.conv(self.bn(x))


class WeightStandardised(nn.Conv2d):
    def forward(self, x):
        w = (self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)) / (self.weight.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


class StandardisedThenNorm(ConvThenNorm):
    def __init__(self):
        super().__init__()
        self.conv = WeightStandardised(3, 3, 3, padding=1, bias=False)


class DataDependent(ConvThenNorm):
    def forward(self, x):
        y = self.bn(self.conv(x))
        return y if y.sum() > 0 else -y  # torch.fx cannot trace this


def test_a_plain_pair_folds():
    network = randomised_norms(ConvThenNorm())
    folded, folds = fold_batch_norms(network, sample())
    assert folds == 1 and isinstance(folded.bn, nn.Identity) and folded.conv.bias is not None


def test_no_fold_where_the_data_flow_or_the_layer_type_does_not_allow_it():
    for kind in (SharedOutput, NormBeforeConv, StandardisedThenNorm, DataDependent):
        network = randomised_norms(kind())
        folded, folds = fold_batch_norms(network, sample())
        assert folds == 0 and folded is network, kind.__name__


def test_the_pairs_come_from_the_trace_not_from_the_registration_order():
    # the output check would also refuse these folds; the trace must not even propose them
    for kind in (SharedOutput, NormBeforeConv):
        network = kind().eval()
        assert _foldable_pairs(network, _NormsAsLeaves().trace(network)) == [], kind.__name__
    network = ConvThenNorm().eval()
    assert _foldable_pairs(network, _NormsAsLeaves().trace(network)) == [("conv", "bn")]


def test_torchscript_and_training_mode_are_left_alone():
    network = randomised_norms(ConvThenNorm())
    scripted = torch.jit.script(network)
    assert fold_batch_norms(scripted, sample()) == (scripted, 0)
    network.train()
    assert fold_batch_norms(network, sample()) == (network, 0)
