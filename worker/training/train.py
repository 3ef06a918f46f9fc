"""The fine-tuning loop: real vs self-blended, BCE with logits, checkpoints, resume.

The output folder holds, after every ``save_every`` steps and at the end:

- ``checkpoint-<step>.pt``: the model alone, in the worker's checkpoint layout
  (:func:`worker.models.checkpoint.save_checkpoint`), loadable by any backend;
- ``train-state.pt``: what only training needs (step, optimizer state, loss history, the
  settings the run was started with, and which checkpoint file + sha256 it goes with);
- at the end, ``model.toml``: the model file (MODEL_FILE.md) naming the last checkpoint,
  backend ``timm``, its preprocessing and aggregation, and no ``[calibration]``: a
  calibration comes from a separate validation run.

Resuming reads ``train-state.pt``, checks the run's settings are the same, loads the
checkpoint through its pinned sha256 and goes on from the saved step; the data order and
the torch RNG derive from ``(seed, step)``, so the resumed run matches an unbroken one.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from ..models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, sha256_of
from ..models.timm_classifier import build_model
from .dataset import DetectionSettings, SelfBlendedPairs

STATE_FILE = "train-state.pt"
MODEL_FILE = "model.toml"


class TrainingError(RuntimeError):
    """The run cannot start or resume as asked."""


@dataclass(frozen=True)
class TrainSettings:
    architecture: str = "efficientnet_b0"
    input_size: int = 224
    steps: int = 1000
    batch_size: int = 8                   # faces per step; each gives a real and a fake input
    optimizer: str = "adamw"              # "adamw" | "sgd"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    save_every: int = 100
    keep_checkpoints: int = 2
    seed: int = 0
    blend_pool: int = 0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelFileInfo:
    name: str
    version: str
    aggregation: str = "mean"             # "confident_strategy" | "mean" | "max"
    aggregation_threshold: float = 0.8    # only for confident_strategy


@dataclass
class TrainResult:
    step: int
    losses: list[float]
    checkpoint: Path
    sha256: str
    model_file: Path | None = None
    resumed_from: int | None = None
    extra: dict = field(default_factory=dict)


def _run_identity(settings: TrainSettings, detection: DetectionSettings, init_sha: str | None) -> dict:
    """What must not change between a run and its resume (steps may grow, save_every may vary)."""
    fixed = asdict(settings)
    for free in ("steps", "save_every", "keep_checkpoints"):
        fixed.pop(free)
    return json.loads(json.dumps({"train": fixed, "detection": asdict(detection), "init_sha256": init_sha}))


def _optimizer(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9,
                               weight_decay=settings.weight_decay)
    raise TrainingError(f"unknown optimizer {settings.optimizer!r} (adamw or sgd)")


def _load_into(model: torch.nn.Module, path: Path, sha256: str, architecture: str) -> None:
    loaded = load_checkpoint(path, sha256)
    if loaded.architecture and loaded.architecture != architecture:
        raise CheckpointError(f"checkpoint {path} is for {loaded.architecture}, training {architecture}")
    try:
        model.load_state_dict(loaded.state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit {architecture}: {str(exc)[:500]}") from None


def train(pairs: SelfBlendedPairs, out_dir: Path, settings: TrainSettings, detection: DetectionSettings,
          info: ModelFileInfo, device: torch.device = torch.device("cpu"),
          init_checkpoint: Path | None = None, init_sha256: str | None = None, resume: bool = False,
          progress: bool = True, stop_after: int | None = None,
          on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train until ``settings.steps`` (or ``stop_after`` steps in this call, for interruptions)."""
    if settings.steps < 1 or settings.batch_size < 1 or settings.save_every < 1:
        raise TrainingError("steps, batch size and save_every must be at least 1")
    if pairs.input_size != settings.input_size or pairs.seed != settings.seed:
        raise TrainingError("the pairs were built for another input size or seed")
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = _run_identity(settings, detection, init_sha256)
    torch.manual_seed(settings.seed)  # the random init, when no checkpoint replaces it
    model = build_model(settings.architecture)
    step, losses, resumed_from = 0, [], None
    state_path = out_dir / STATE_FILE
    if resume:
        if not state_path.is_file():
            raise TrainingError(f"nothing to resume: {state_path} does not exist")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state["identity"] != identity:
            raise TrainingError("the saved run used other settings; resume with the same ones "
                                f"(saved: {json.dumps(state['identity'])})")
        _load_into(model, out_dir / state["checkpoint"], state["sha256"], settings.architecture)
        model.to(device)
        optimizer = _optimizer(model, settings)
        optimizer.load_state_dict(state["optimizer"])
        step, losses, resumed_from = int(state["step"]), list(state["losses"]), int(state["step"])
    else:
        if state_path.is_file():
            raise TrainingError(f"{out_dir} already holds a run: pass --resume, or use another folder")
        if init_checkpoint is not None:
            if not init_sha256:
                raise TrainingError("an initial checkpoint needs its pinned sha256")
            _load_into(model, init_checkpoint, init_sha256, settings.architecture)
        model.to(device)
        optimizer = _optimizer(model, settings)

    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    last = settings.steps if stop_after is None else min(settings.steps, step + stop_after)
    checkpoint, sha = None, None
    saved_at = step
    bar = tqdm(total=settings.steps, initial=step, desc="train", unit="step", disable=not progress)
    try:
        while step < last:
            torch.manual_seed(settings.seed * 1_000_003 + step)
            inputs, labels = pairs.batch(step, settings.batch_size)
            logits = model(inputs.to(device)).float().squeeze(1)
            loss = loss_fn(logits, labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if on_step:
                on_step(step, losses[-1])
            if step % settings.save_every == 0 or step == last:
                checkpoint, sha = _save(model, optimizer, out_dir, step, losses, identity, settings, info)
                saved_at = step
    except KeyboardInterrupt:  # Ctrl-C: keep what was done, so --resume goes on from here
        if step > saved_at:
            _save(model, optimizer, out_dir, step, losses, identity, settings, info)
        raise
    finally:
        bar.close()
    if checkpoint is None:  # nothing left to do: the saved state is the answer
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        checkpoint, sha = out_dir / state["checkpoint"], state["sha256"]
    result = TrainResult(step=step, losses=losses, checkpoint=checkpoint, sha256=sha,
                         resumed_from=resumed_from)
    if step >= settings.steps:
        result.model_file = write_model_file(out_dir / MODEL_FILE, checkpoint, sha, settings, detection, info)
    return result


def _save(model, optimizer, out_dir: Path, step: int, losses: list[float], identity: dict,
          settings: TrainSettings, info: ModelFileInfo) -> tuple[Path, str]:
    checkpoint = out_dir / f"checkpoint-{step:07d}.pt"
    tmp = checkpoint.with_suffix(".pt.tmp")
    save_checkpoint(model, tmp, settings.architecture, info.version)
    os.replace(tmp, checkpoint)
    sha = sha256_of(checkpoint)
    state = {"step": step, "optimizer": optimizer.state_dict(), "losses": losses, "identity": identity,
             "checkpoint": checkpoint.name, "sha256": sha}
    tmp_state = out_dir / (STATE_FILE + ".tmp")
    torch.save(state, tmp_state)
    os.replace(tmp_state, out_dir / STATE_FILE)
    old = sorted(out_dir.glob("checkpoint-*.pt"))[:-max(1, settings.keep_checkpoints)]
    for path in old:
        path.unlink()
    return checkpoint, sha


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: same escapes as JSON for what we write
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def write_model_file(path: Path, checkpoint: Path, sha256: str, settings: TrainSettings,
                     detection: DetectionSettings, info: ModelFileInfo) -> Path:
    """The model file (MODEL_FILE.md) for the trained checkpoint; no [calibration]."""
    aggregation = {"method": info.aggregation}
    if info.aggregation == "confident_strategy":
        aggregation["threshold"] = float(info.aggregation_threshold)
    sections = [
        ({"name": info.name, "version": info.version, "backend": "timm",
          "architecture": settings.architecture}, None),
        ({"path": os.path.relpath(checkpoint, path.parent), "sha256": sha256}, "[[checkpoints]]"),
        ({"frames_per_video": detection.frames_per_video, "input_size": settings.input_size,
          "crop_margin": float(detection.crop_margin), "resize": "isotropic",
          "mean": [float(v) for v in settings.mean], "std": [float(v) for v in settings.std],
          "detector_scale": float(detection.detector_scale),
          "detector_thresholds": [float(v) for v in detection.detector_thresholds]}, "[preprocessing]"),
        (aggregation, "[aggregation]"),
    ]
    lines = ["# Written by `python -m worker train` (Self-Blended Images). Uncalibrated: a",
             "# [calibration] table comes from a separate validation run."]
    for table, header in sections:
        if header:
            lines += ["", header]
        lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
