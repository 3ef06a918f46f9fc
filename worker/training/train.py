"""The fine-tuning loop: real vs self-blended, BCE with logits, checkpoints, resume.

The output folder holds, after every ``save_every`` steps and at the end:

- ``checkpoint-<step>.pt``: the model alone, in the worker's checkpoint layout
  (:func:`worker.models.checkpoint.save_checkpoint`), loadable by any backend;
- ``train-state.pt``: what only training needs (step, optimizer state, loss history, the
  settings the run was started with, and which checkpoint file + sha256 it goes with);
- at the end, ``model.toml``: the model file (docs/model-file.md) naming the last checkpoint,
  backend ``timm``, its preprocessing and aggregation, and no ``[calibration]``: a
  calibration comes from a separate validation run.

Resuming reads ``train-state.pt``, checks the run's settings are the same, loads the
checkpoint through its pinned sha256 and goes on from the saved step; the data order and
the torch RNG derive from ``(seed, step)``, so the resumed run matches an unbroken one.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from worker.models.checkpoint import save_checkpoint, sha256_of
from worker.models.spec import IMAGENET_MEAN, IMAGENET_STD, CheckpointRef, ModelSpec, Preprocessing, write_model_file
from worker.models.timm_backend import build_model, load_network
from worker.training.dataset import DetectionSettings, SelfBlendedPairs, step_batches

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
    workers: int = 0                      # processes making the blends (0: in the training loop)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


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
    model_file: Path | None = None    # written once the run reaches its last step
    resumed_from: int | None = None


def _run_identity(settings: TrainSettings, detection: DetectionSettings, init_sha: str | None) -> dict:
    """What must not change between a run and its resume (steps may grow, save_every may vary)."""
    fixed = asdict(settings)
    for free in ("steps", "save_every", "keep_checkpoints", "workers"):
        fixed.pop(free)
    return json.loads(json.dumps({"train": fixed, "detection": asdict(detection), "init_sha256": init_sha}))


def _optimizer(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9,
                               weight_decay=settings.weight_decay)
    raise TrainingError(f"unknown optimizer {settings.optimizer!r} (adamw or sgd)")


def _network(architecture: str, path: Path, sha256: str) -> torch.nn.Module:
    """Weights through the worker's own loader: sha256 first, then a strict load."""
    return load_network(architecture, CheckpointRef(path=Path(path).resolve(), sha256=sha256.strip().lower()))


def train(pairs: SelfBlendedPairs, out_dir: Path, settings: TrainSettings, detection: DetectionSettings,
          info: ModelFileInfo, device: torch.device = torch.device("cpu"),
          init_checkpoint: Path | None = None, init_sha256: str | None = None, resume: bool = False,
          progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train until ``settings.steps`` (or ``stop_after`` steps in this call, for interruptions)."""
    if settings.steps < 1 or settings.batch_size < 1 or settings.save_every < 1:
        raise TrainingError("steps, batch size and save_every must be at least 1")
    if pairs.preprocessing != preprocessing_of(settings, detection) or pairs.seed != settings.seed:
        raise TrainingError("the pairs were built with other preprocessing or another seed")
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = _run_identity(settings, detection, init_sha256)
    step, losses, resumed_from = 0, [], None
    state_path = out_dir / STATE_FILE
    if resume:
        if not state_path.is_file():
            raise TrainingError(f"nothing to resume: {state_path} does not exist")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state["identity"] != identity:
            raise TrainingError("the saved run used other settings; resume with the same ones "
                                f"(saved: {json.dumps(state['identity'])})")
        model = _network(settings.architecture, out_dir / state["checkpoint"], state["sha256"]).to(device)
        optimizer = _optimizer(model, settings)
        optimizer.load_state_dict(state["optimizer"])
        step, losses, resumed_from = int(state["step"]), list(state["losses"]), int(state["step"])
    else:
        if state_path.is_file():
            raise TrainingError(f"{out_dir} already holds a run: pass --resume, or use another folder")
        if init_checkpoint is not None:
            if not init_sha256:
                raise TrainingError("an initial checkpoint needs its pinned sha256")
            model = _network(settings.architecture, init_checkpoint, init_sha256)
        else:
            torch.manual_seed(settings.seed)  # a reproducible random init
            model = build_model(settings.architecture)
        model.to(device)
        optimizer = _optimizer(model, settings)

    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    last = settings.steps if stop_after is None else min(settings.steps, step + stop_after)
    checkpoint, sha = None, None
    saved_at = step
    bar = tqdm(total=settings.steps, initial=step, desc="train", unit="step", disable=not progress)
    try:
        for inputs, labels in step_batches(pairs, settings.batch_size, step, last, settings.workers):
            torch.manual_seed(settings.seed * 1_000_003 + step)
            logits = model(inputs.to(device)).float().squeeze(1)
            loss = loss_fn(logits, labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
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
        spec = write_model(out_dir / MODEL_FILE, checkpoint, sha, settings, detection, info)
        result.model_file = spec.source
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


def preprocessing_of(settings: TrainSettings, detection: DetectionSettings) -> Preprocessing:
    """The model file's [preprocessing]: how the worker must cut and feed faces to this model."""
    return Preprocessing(input_size=settings.input_size, frames_per_video=detection.frames_per_video,
                         crop_margin=float(detection.crop_margin), resize="isotropic",
                         mean=tuple(settings.mean), std=tuple(settings.std),
                         detector_scale=float(detection.detector_scale),
                         detector_thresholds=tuple(float(t) for t in detection.detector_thresholds))


def write_model(path: Path, checkpoint: Path, sha256: str, settings: TrainSettings,
                detection: DetectionSettings, info: ModelFileInfo) -> ModelSpec:
    """The model file (docs/model-file.md) for the trained checkpoint; no [calibration]."""
    pre = preprocessing_of(settings, detection)
    aggregation = {"method": info.aggregation}
    if info.aggregation == "confident_strategy":
        aggregation["threshold"] = float(info.aggregation_threshold)
    return write_model_file(
        path, name=info.name, version=info.version, backend="timm", architecture=settings.architecture,
        checkpoints=[(checkpoint, sha256)], aggregation=aggregation,
        preprocessing={"frames_per_video": pre.frames_per_video, "input_size": pre.input_size,
                       "crop_margin": pre.crop_margin, "resize": pre.resize, "mean": list(pre.mean),
                       "std": list(pre.std), "detector_scale": pre.detector_scale,
                       "detector_thresholds": list(pre.detector_thresholds)})
