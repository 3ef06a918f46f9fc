"""Derive the state-dict format of a published DFDC-winner B7 checkpoint, without timm.

Run ``python tests/data/derive_dfdc_b7_state_dict.py`` to (re)write
``tests/data/dfdc_b7_state_dict.json``. The test suite checks our model against that file, so
the facts here must not come from our model or from the timm installed today. They come from
published sources, written out below as plain arithmetic:

1. selimsef/dfdc_deepfake_challenge (MIT), ``training/zoo/classifiers.py``: ``DeepFakeClassifier``
   holds ``encoder`` = timm ``tf_efficientnet_b7_ns(pretrained=True, drop_path_rate=0.2)`` built
   with timm's defaults (so the encoder keeps its 1000-class ``classifier`` head), then
   ``avg_pool`` (AdaptiveAvgPool2d, no state), ``dropout`` (no state) and
   ``fc = Linear(2560, 1)``. ``train_classifier.py`` saves ``{'epoch', 'state_dict', 'bce_best'}``
   from an apex ``DistributedDataParallel`` (hence ``module.``) around a model converted with
   ``convert_syncbn_model`` (apex SyncBatchNorm keeps BatchNorm's parameters and buffers).
   ``predict_folder.py`` loads the seven published B7 checkpoints with ``strict=True`` after
   stripping ``module.``; its Dockerfile pins ``timm==0.4.12``.
2. timm 0.4.12 (and 0.1.18, the release current when the checkpoints were trained, Feb-Mar
   2020; both read at their git tags), ``timm/models/efficientnet.py``:
   ``tf_efficientnet_b7_ns`` = ``_gen_efficientnet(channel_multiplier=2.0, depth_multiplier=3.1)``
   with the arch strings in ``ARCH`` below, ``stem_size=32``, ``num_features=round(1280)``,
   ``num_classes=1000``; attribute names ``conv_stem, bn1, blocks, conv_head, bn2, classifier``.
   ``efficientnet_builder.py``: depth scaling ``ceil(repeats * depth_multiplier)``;
   ``round_channels`` = ``make_divisible(c * multiplier, 8)``. ``efficientnet_blocks.py``:
   ``DepthwiseSeparableConv`` (``conv_dw, bn1, se, conv_pw, bn2``), ``InvertedResidual``
   (``conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3``, mid = make_divisible(in * exp)),
   ``SqueezeExcite`` (``conv_reduce``, ``conv_expand``, both with bias; reduced channels =
   round(block input channels * 0.25)); convolutions have no bias.
3. torch BatchNorm2d (since 0.4.1): ``weight, bias, running_mean, running_var`` of shape [C]
   and a 0-dim ``num_batches_tracked``.
4. Cross-check: timm's published parameter count for tf_efficientnet_b7 is 66.35M (with the
   1000-class head); the ``fc`` adds 2560 + 1 = 2561.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

OUT = Path(__file__).with_name("dfdc_b7_state_dict.json")

# (block type, repeats, kernel, stride, expansion, output channels) from timm's arch strings
# 'ds_r1_k3_s1_e1_c16_se0.25', 'ir_r2_k3_s2_e6_c24_se0.25', ... (all with se0.25).
ARCH = [("ds", 1, 3, 1, 1, 16), ("ir", 2, 3, 2, 6, 24), ("ir", 2, 5, 2, 6, 40),
        ("ir", 3, 3, 2, 6, 80), ("ir", 3, 5, 1, 6, 112), ("ir", 4, 5, 2, 6, 192),
        ("ir", 1, 3, 1, 6, 320)]
CHANNEL_MULTIPLIER, DEPTH_MULTIPLIER = 2.0, 3.1
STEM, HEAD, IMAGENET_CLASSES, SE_RATIO = 32, 1280, 1000, 0.25


def make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def round_channels(c: int) -> int:
    return make_divisible(c * CHANNEL_MULTIPLIER)


def batch_norm(prefix: str, c: int) -> list[tuple[str, list[int]]]:
    return [(f"{prefix}.weight", [c]), (f"{prefix}.bias", [c]), (f"{prefix}.running_mean", [c]),
            (f"{prefix}.running_var", [c]), (f"{prefix}.num_batches_tracked", [])]


def squeeze_excite(prefix: str, chs: int, block_in: int) -> list[tuple[str, list[int]]]:
    rd = round(block_in * SE_RATIO)
    return [(f"{prefix}.conv_reduce.weight", [rd, chs, 1, 1]), (f"{prefix}.conv_reduce.bias", [rd]),
            (f"{prefix}.conv_expand.weight", [chs, rd, 1, 1]), (f"{prefix}.conv_expand.bias", [chs])]


def encoder_entries() -> list[tuple[str, list[int]]]:
    stem = round_channels(STEM)
    out = [("conv_stem.weight", [stem, 3, 3, 3]), *batch_norm("bn1", stem)]
    chs = stem
    for stage, (kind, repeats, k, _stride, exp, c) in enumerate(ARCH):
        c_out = round_channels(c)
        for i in range(int(math.ceil(repeats * DEPTH_MULTIPLIER))):
            p = f"blocks.{stage}.{i}"
            if kind == "ds":
                out += [(f"{p}.conv_dw.weight", [chs, 1, k, k]), *batch_norm(f"{p}.bn1", chs),
                        *squeeze_excite(f"{p}.se", chs, chs),
                        (f"{p}.conv_pw.weight", [c_out, chs, 1, 1]), *batch_norm(f"{p}.bn2", c_out)]
            else:
                mid = make_divisible(chs * exp)
                out += [(f"{p}.conv_pw.weight", [mid, chs, 1, 1]), *batch_norm(f"{p}.bn1", mid),
                        (f"{p}.conv_dw.weight", [mid, 1, k, k]), *batch_norm(f"{p}.bn2", mid),
                        *squeeze_excite(f"{p}.se", mid, chs),
                        (f"{p}.conv_pwl.weight", [c_out, mid, 1, 1]), *batch_norm(f"{p}.bn3", c_out)]
            chs = c_out
    head = round_channels(HEAD)
    out += [("conv_head.weight", [head, chs, 1, 1]), *batch_norm("bn2", head),
            ("classifier.weight", [IMAGENET_CLASSES, head]), ("classifier.bias", [IMAGENET_CLASSES])]
    return out


def derive() -> dict:
    entries = [(f"encoder.{k}", s) for k, s in encoder_entries()]
    entries += [("fc.weight", [1, 2560]), ("fc.bias", [1])]
    params = sum(math.prod(s) for k, s in entries
                 if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    return {
        "format": "state_dict of selimsef/dfdc_deepfake_challenge DeepFakeClassifier"
                  "(encoder='tf_efficientnet_b7_ns'), keys after stripping 'module.'",
        "checkpoint_layout": {"keys": ["epoch", "state_dict", "bce_best"], "key_prefix": "module."},
        "sources": [
            "selimsef/dfdc_deepfake_challenge training/zoo/classifiers.py (DeepFakeClassifier, "
            "encoder_params['tf_efficientnet_b7_ns']: features 2560)",
            "selimsef/dfdc_deepfake_challenge training/pipelines/train_classifier.py (torch.save "
            "layout, apex DistributedDataParallel + convert_syncbn_model)",
            "selimsef/dfdc_deepfake_challenge predict_folder.py (strict load after stripping "
            "'module.'), Dockerfile (timm==0.4.12)",
            "timm v0.4.12 and v0.1.18 timm/models/efficientnet.py, efficientnet_builder.py, "
            "efficientnet_blocks.py (arch strings, multipliers, rounding, attribute names)",
            "published parameter count of timm tf_efficientnet_b7: 66.35M",
        ],
        "derived_by": "tests/data/derive_dfdc_b7_state_dict.py (plain arithmetic, no timm import)",
        "parameter_count": params,
        "tensors": [[k, s] for k, s in entries],
    }


if __name__ == "__main__":
    facts = derive()
    tensors = facts.pop("tensors")
    head = json.dumps(facts, indent=1)[:-2]
    rows = ",\n".join(f"  {json.dumps(row)}" for row in tensors)
    OUT.write_text(f'{head},\n "tensors": [\n{rows}\n ]\n}}\n')
    print(f"{len(tensors)} tensors, {facts['parameter_count']:,} parameters -> {OUT}")
