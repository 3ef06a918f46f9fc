"""``python -m worker train``: its arguments, and the wiring from them to a training run.

Kept out of ``worker/__main__.py`` so the CLI module only registers the subcommand; this
module imports nothing heavy until the command runs.

Where the weights start: ``--init-model model.toml`` (an existing ``timm`` model file: its
architecture, checkpoint and preprocessing become the defaults, so the fine-tuned model is
fed faces exactly as the one it came from), or ``--init-checkpoint`` with its sha256, or a
seeded random init. Flags given explicitly always win.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Built-in defaults for what a model file can also supply (explicit flag > --init-model > these).
DEFAULTS = {"architecture": "efficientnet_b0", "input_size": 224, "crop_margin": 1 / 3,
            "frames_per_video": 16, "detector_scale": 1.0, "detector_thresholds": (0.6, 0.7, 0.7),
            "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "aggregation": "mean"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", type=Path, help="real videos, or folders of them")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: checkpoints, train-state.pt, model.toml")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--init-model", type=Path,
                        help="start from this timm model file (architecture, weights, preprocessing)")
    parser.add_argument("--init-checkpoint", type=Path, help="start from these weights (else random init)")
    parser.add_argument("--init-sha256", help="the pinned sha256 of --init-checkpoint")
    parser.add_argument("--architecture", help=f"timm model name (default {DEFAULTS['architecture']})")
    parser.add_argument("--input-size", type=int, help=f"default {DEFAULTS['input_size']}")
    parser.add_argument("--crop-margin", type=float, help="share of the box added on each side (1/3)")
    parser.add_argument("--frames-per-video", type=int, help=f"default {DEFAULTS['frames_per_video']}")
    parser.add_argument("--detector-scale", type=float, help="frames scaled by this before MTCNN (1.0)")
    parser.add_argument("--detector-thresholds", type=float, nargs=3, help="MTCNN's (0.6 0.7 0.7)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8, help="faces per step (x2 inputs)")
    parser.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--keep-checkpoints", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blend-pool", type=int, default=0,
                        help="fixed blends per face (0 = a fresh blend every epoch)")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes that make the blends ahead of the loop (0: in the loop)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", type=Path, help="face-crop cache folder (default: OUT/face-cache)")
    parser.add_argument("--name", help="model name in the model file (default sbi-ARCHITECTURE)")
    parser.add_argument("--version", help="model version (default sbi-STEPSsteps)")
    parser.add_argument("--aggregation", choices=["mean", "max", "confident_strategy"],
                        help="the written model file's aggregation (default mean)")
    parser.add_argument("--no-progress", action="store_true")


def _from_init_model(path: Path) -> tuple[dict, Path, str]:
    """The defaults an existing timm model file supplies, and its checkpoint + sha256."""
    from worker.models.spec import ModelFileError, load_model_spec

    spec = load_model_spec(path)
    if spec.backend != "timm":
        raise ModelFileError(f"{path}: --init-model takes a timm model file, not backend {spec.backend}")
    if len(spec.checkpoints) != 1:
        raise ModelFileError(f"{path}: an ensemble of {len(spec.checkpoints)}; fine-tune one member "
                             "with --init-checkpoint and --init-sha256")
    pre = spec.preprocessing
    values = {"architecture": spec.architecture, "input_size": pre.input_size,
              "crop_margin": pre.crop_margin, "frames_per_video": pre.frames_per_video,
              "detector_scale": pre.detector_scale, "detector_thresholds": pre.detector_thresholds,
              "mean": pre.mean, "std": pre.std, "aggregation": spec.aggregation.method}
    return values, spec.checkpoints[0].path, spec.checkpoints[0].sha256


def run(args: argparse.Namespace) -> int:
    import torch

    from worker.models.checkpoint import CheckpointError
    from worker.models.spec import ModelFileError
    from worker.training.dataset import DetectionSettings, SelfBlendedPairs, TrainingDataError, find_videos, load_faces
    from worker.training.train import ModelFileInfo, TrainingError, TrainSettings, preprocessing_of, train

    try:
        chosen, init_checkpoint, init_sha256 = dict(DEFAULTS), args.init_checkpoint, args.init_sha256
        if args.init_model is not None:
            if args.init_checkpoint is not None:
                raise TrainingError("give --init-model or --init-checkpoint, not both")
            from_model, init_checkpoint, init_sha256 = _from_init_model(args.init_model)
            chosen.update(from_model)
        chosen.update({key: getattr(args, key) for key in DEFAULTS if getattr(args, key, None) is not None})
        device = torch.device(args.device)
        detection = DetectionSettings(frames_per_video=chosen["frames_per_video"],
                                      crop_margin=chosen["crop_margin"],
                                      detector_scale=chosen["detector_scale"],
                                      detector_thresholds=tuple(chosen["detector_thresholds"]))
        settings = TrainSettings(architecture=chosen["architecture"], input_size=chosen["input_size"],
                                 steps=args.steps, batch_size=args.batch_size, optimizer=args.optimizer,
                                 lr=args.lr, weight_decay=args.weight_decay, save_every=args.save_every,
                                 keep_checkpoints=args.keep_checkpoints, seed=args.seed,
                                 blend_pool=args.blend_pool, workers=args.workers,
                                 mean=tuple(chosen["mean"]),
                                 std=tuple(chosen["std"]))
        info = ModelFileInfo(name=args.name or f"sbi-{settings.architecture}",
                             version=args.version or f"sbi-{args.steps}steps",
                             aggregation=chosen["aggregation"])
        videos = find_videos(args.videos)
        faces, skipped = load_faces(videos, detection, args.cache or args.out / "face-cache", device)
        for video, reason in skipped.items():
            print(f"skipped {video}: {reason}", file=sys.stderr)
        pairs = SelfBlendedPairs(faces, preprocessing_of(settings, detection), settings.seed,
                                 blend_pool=settings.blend_pool)
        result = train(pairs, args.out, settings, detection, info, device=device,
                       init_checkpoint=init_checkpoint, init_sha256=init_sha256,
                       resume=args.resume, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"interrupted; the last step is saved in {args.out}: --resume continues", file=sys.stderr)
        return 130
    except (TrainingError, TrainingDataError, CheckpointError, ModelFileError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"videos": len(videos), "faces": len(faces), "skipped": len(skipped),
                      "step": result.step, "resumed_from": result.resumed_from,
                      "first_loss": result.losses[0] if result.losses else None,
                      "last_loss": result.losses[-1] if result.losses else None,
                      "checkpoint": str(result.checkpoint), "sha256": result.sha256,
                      "model_file": str(result.model_file) if result.model_file else None}))
    return 0
