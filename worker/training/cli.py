"""``python -m worker train``: its arguments, and the wiring from them to a training run.

Kept out of ``worker/__main__.py`` so the CLI module only registers the subcommand; this
module imports nothing heavy until the command runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", type=Path, help="real videos, or folders of them")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: checkpoints, train-state.pt, model.toml")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--architecture", default="efficientnet_b0", help="timm model name")
    parser.add_argument("--init-checkpoint", type=Path, help="start from these weights (else random init)")
    parser.add_argument("--init-sha256", help="the pinned sha256 of --init-checkpoint")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--crop-margin", type=float, default=1 / 3)
    parser.add_argument("--frames-per-video", type=int, default=16)
    parser.add_argument("--detector-scale", type=float, default=1.0)
    parser.add_argument("--detector-thresholds", type=float, nargs=3, default=(0.6, 0.7, 0.7))
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
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", type=Path, help="face-crop cache folder (default: OUT/face-cache)")
    parser.add_argument("--name", help="model name in the model file (default sbi-ARCHITECTURE)")
    parser.add_argument("--version", help="model version (default sbi-STEPSsteps)")
    parser.add_argument("--aggregation", choices=["mean", "max", "confident_strategy"], default="mean")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..models.checkpoint import CheckpointError
    from ..models.spec import ModelFileError
    from .dataset import DetectionSettings, SelfBlendedPairs, TrainingDataError, find_videos, load_faces
    from .train import ModelFileInfo, TrainingError, TrainSettings, preprocessing_of, train

    device = torch.device(args.device)
    detection = DetectionSettings(frames_per_video=args.frames_per_video, crop_margin=args.crop_margin,
                                  detector_scale=args.detector_scale,
                                  detector_thresholds=tuple(args.detector_thresholds))
    settings = TrainSettings(architecture=args.architecture, input_size=args.input_size, steps=args.steps,
                             batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                             weight_decay=args.weight_decay, save_every=args.save_every,
                             keep_checkpoints=args.keep_checkpoints, seed=args.seed,
                             blend_pool=args.blend_pool)
    info = ModelFileInfo(name=args.name or f"sbi-{args.architecture}",
                         version=args.version or f"sbi-{args.steps}steps", aggregation=args.aggregation)
    try:
        videos = find_videos(args.videos)
        faces, skipped = load_faces(videos, detection, args.cache or args.out / "face-cache", device)
        for video, reason in skipped.items():
            print(f"skipped {video}: {reason}", file=sys.stderr)
        pairs = SelfBlendedPairs(faces, preprocessing_of(settings, detection), settings.seed,
                                 blend_pool=settings.blend_pool)
        result = train(pairs, args.out, settings, detection, info, device=device,
                       init_checkpoint=args.init_checkpoint, init_sha256=args.init_sha256,
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
