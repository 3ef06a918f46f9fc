"""Batch norms folded into the convolutions before them, for inference.

In eval mode a batch norm is a per-channel affine map, ``(x - mean) / sqrt(var + eps) * w + b``.
When it reads a convolution's output and nothing else reads that output, the map can be
moved into the convolution's weights and bias, and the separate pass over the activations
goes away, which makes a face noticeably cheaper to classify on a CPU (figures in
docs/benchmarks.md, "What each change measured").
The scores move by float rounding only (about 1e-6 on the logits).

The data flow is read from a ``torch.fx`` trace, not from the order in which a module
registers its children, so a batch norm is folded only where it really is applied to that
convolution's output alone. Only the layer types whose arithmetic is known are touched:
``nn.Conv2d`` and timm's ``Conv2dSame`` (padding before the convolution) followed by
``nn.BatchNorm2d`` or timm's ``BatchNormAct2d`` (the batch norm, then its ``drop`` and
``act``, which stay). A network that cannot be traced (TorchScript, data-dependent
control flow) is returned as it is, and so is one whose folded outputs are not within
float rounding of the original's on a sample batch.
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.fx

log = logging.getLogger(__name__)

try:  # timm is a dependency of the generic backend; without it only torch's own types fold
    from timm.layers import BatchNormAct2d, Conv2dSame
except ImportError:  # pragma: no cover
    BatchNormAct2d = Conv2dSame = None

CONVOLUTIONS = tuple(t for t in (torch.nn.Conv2d, Conv2dSame) if t is not None)
NORMS = tuple(t for t in (torch.nn.BatchNorm2d, BatchNormAct2d) if t is not None)


class _NormsAsLeaves(torch.fx.Tracer):
    """torch's own modules, the convolutions and every batch norm are single nodes in the trace."""

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        return isinstance(m, (torch.nn.BatchNorm2d, *CONVOLUTIONS)) or super().is_leaf_module(m, qualname)


def fold_batch_norms(network: torch.nn.Module, sample: torch.Tensor,
                     rtol: float = 1e-3, atol: float = 1e-4) -> tuple[torch.nn.Module, int]:
    """(network, folds): an eval-mode copy of ``network`` with its batch norms folded, or
    ``network`` itself with 0 when nothing could be folded or the copy's outputs on
    ``sample`` (a batch the network takes) differ from the original's by more than float
    rounding (``rtol``, ``atol``)."""
    if isinstance(network, torch.jit.ScriptModule) or network.training:
        return network, 0
    try:
        graph = _NormsAsLeaves().trace(network)
    except Exception as exc:  # noqa: BLE001 - fx raises many kinds; any means "not traceable"
        log.info("batch norms not folded: the network cannot be traced (%s)", str(exc).splitlines()[0][:200])
        return network, 0
    pairs = _foldable_pairs(network, graph)
    if not pairs:
        return network, 0
    folded = copy.deepcopy(network)
    for conv_name, norm_name in pairs:
        conv, norm = folded.get_submodule(conv_name), folded.get_submodule(norm_name)
        _fold_into(conv, norm)
        _replace(folded, norm_name, _after_norm(norm))
    with torch.inference_mode():
        before, after = network(sample), folded(sample)
    if not _close(before, after, rtol, atol):
        log.warning("batch norms not folded: the folded network's outputs differ from the original's")
        return network, 0
    log.info("%d batch norms folded into the convolutions before them", len(pairs))
    return folded, len(pairs)


def _foldable_pairs(network: torch.nn.Module, graph: torch.fx.Graph) -> list[tuple[str, str]]:
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1 or len(node.users) != 1:
            continue
        conv = network.get_submodule(node.target)
        if type(conv) not in CONVOLUTIONS:  # subclasses may transform their weights (StdConv2d)
            continue
        (user,) = node.users
        if user.op != "call_module" or calls[user.target] != 1 or user.args != (node,) or user.kwargs:
            continue
        norm = network.get_submodule(user.target)
        if (type(norm) in NORMS and not norm.training and norm.track_running_stats
                and norm.running_mean is not None and norm.num_features == conv.out_channels):
            pairs.append((node.target, user.target))
    return pairs


@torch.no_grad()
def _fold_into(conv: torch.nn.Conv2d, norm: torch.nn.BatchNorm2d) -> None:
    dtype = conv.weight.dtype
    scale = torch.rsqrt(norm.running_var.double() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    shift = -norm.running_mean.double() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
    conv.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(dtype))
    conv.bias = torch.nn.Parameter((bias * scale + shift).to(dtype), requires_grad=False)


def _after_norm(norm: torch.nn.Module) -> torch.nn.Module:
    """What the norm layer does after its batch norm: timm's drop and activation, or nothing."""
    if BatchNormAct2d is not None and isinstance(norm, BatchNormAct2d):
        return torch.nn.Sequential(norm.drop, norm.act)
    return torch.nn.Identity()


def _replace(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def _close(a, b, rtol: float, atol: float) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return all(_close(x, y, rtol, atol) for x, y in zip(a, b))
    return False
