"""``python -m worker eval`` and ``python -m worker calibrate``: argument parsing and wiring.

``eval`` scores a labelled dataset with the worker's own pipeline into
``<out>/predictions.jsonl`` (resumable), then writes ``<out>/report.json`` and
``<out>/roc.png``. The model is the one the worker's config names (``model.config``, the
model file); when its file carries a ``[calibration]``, the report adds calibrated figures at
its thresholds. ``calibrate`` fits a calibration to such a predictions file (raw scores) and
writes it into the model file's ``[calibration]`` table (or prints it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from worker.core.calibration import METHODS, TEMPERATURE, CalibrationError
from worker.evaluation.calibration import (DEFAULT_CONFIDENCE, DEFAULT_TARGET_PRECISION, DEFAULT_TARGET_RECALL,
                                           fit_calibration)
from worker.evaluation.datasets import LAYOUTS, DatasetError, load_dataset
from worker.evaluation.predictions import NO_FACES, SCORED, PredictionsError, read_predictions
from worker.evaluation.run import PREDICTIONS_FILE, key_checkpoints

REPORT_FILE = "report.json"
ROC_FILE = "roc.png"


def _named_threshold(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}") from None
    if not name or not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with VALUE in [0, 1], got {text!r}")
    return name, number


def add_parsers(sub, add_config_args: Callable[[argparse.ArgumentParser], None],
                config_of: Callable) -> None:
    """``config_of(args, overrides=[...])`` loads the worker config (``__main__._config``)."""
    p = sub.add_parser("eval", help="score a labelled dataset; report AUC, EER, AP, log-loss, ROC")
    add_config_args(p)
    p.add_argument("dataset", type=Path,
                   help="dataset folder, or its CSV / List_of_testing_videos.txt / metadata.json")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: predictions.jsonl (resumable), report.json, roc.png")
    p.add_argument("--layout", choices=LAYOUTS, help="default: detected from the path")
    p.add_argument("--compression", choices=("raw", "c23", "c40"),
                   help="FaceForensics++ only: one compression level (default: all present)")
    p.add_argument("--threshold", type=_named_threshold, action="append", default=[],
                   metavar="NAME=VALUE",
                   help="extra threshold for precision/recall (the policy's takedown and review "
                        "thresholds are always reported)")
    p.add_argument("--no-face-score", type=float, default=None,
                   help="count videos without faces with this score (default: leave them out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=lambda args: cmd_eval(args, config_of))

    p = sub.add_parser("calibrate", help="fit a calibration and thresholds to an eval's predictions")
    p.add_argument("predictions", type=Path, help="predictions.jsonl, or the eval output folder")
    p.add_argument("--model-file", type=Path,
                   help="model TOML file whose [calibration] table is written (default: print it)")
    p.add_argument("--model-key", help="which model's predictions, if the file holds several")
    p.add_argument("--method", choices=METHODS, default=TEMPERATURE)
    p.add_argument("--target-precision", type=float, default=DEFAULT_TARGET_PRECISION,
                   help="precision the takedown threshold must reach (default %(default)s)")
    p.add_argument("--target-recall", type=float, default=DEFAULT_TARGET_RECALL,
                   help="recall the review threshold must keep (default %(default)s)")
    p.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE,
                   help="the takedown precision must hold at this one-sided confidence (Wilson "
                        "lower bound; 0 = point estimate; default %(default)s)")
    p.add_argument("--no-face-score", type=float, default=None,
                   help="include videos without faces with this raw score (default: leave them out)")
    p.set_defaults(func=cmd_calibrate)


def _fail(exc: Exception) -> int:
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    return 2


def scoring_settings(cfg, spec=None) -> dict:
    """Besides the checkpoints, what changes raw scores: the model file's backend,
    architecture, preprocessing and aggregation, and the worker's ``[faces]``. Predictions
    made with other settings are not reused. (Device, batch size, policy thresholds and the
    calibration do not change raw scores, so they do not count.)"""
    if spec is None:
        from worker.models.spec import load_model_spec

        spec = load_model_spec(cfg.model.config)
    return {"backend": spec.backend, "architecture": spec.architecture,
            "preprocessing": asdict(spec.preprocessing), "aggregation": asdict(spec.aggregation),
            "faces": asdict(cfg.faces)}


def cmd_eval(args, config_of) -> int:
    """Wire the worker's pipeline as the scorer, run, report."""
    from worker.app import build_pipeline
    from worker.evaluation.report import build_report
    from worker.evaluation.run import PipelineScorer, evaluate
    from worker.logs import setup_logging
    from worker.models.spec import load_model_spec

    try:
        dataset = load_dataset(args.dataset, args.layout, args.compression)
    except DatasetError as exc:
        return _fail(exc)
    root = Path(os.path.commonpath([str(v.path.parent) for v in dataset.videos] + [str(dataset.root)]))
    cfg = config_of(args, overrides=["metrics.port=0", f"media.file_roots={root}"])
    if not cfg.model.config:
        return _fail(ValueError("evaluation needs a model: set model.config to its model file"))
    setup_logging("WARNING")
    try:
        spec = load_model_spec(cfg.model.config)  # ModelFileError is a ValueError
        scorer = PipelineScorer(build_pipeline(cfg), scoring_settings(cfg, spec))
        # The loaded model's own calibration (its file's [calibration]), if any, gives the
        # calibrated figures; the predictions stay raw, as calibrate needs them.
        calibration = scorer.pipeline.classifier.info.calibration
        args.out.mkdir(parents=True, exist_ok=True)
        run = evaluate(dataset, scorer, args.out, progress=not args.no_progress)
    except (ValueError, PredictionsError) as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        print(f"\ninterrupted: what was scored is in {args.out / PREDICTIONS_FILE}; "
              f"run the same command again to resume", file=sys.stderr)
        return 130
    predictions = [run.predictions[v.key] for v in dataset.videos]
    thresholds = {"takedown": cfg.policy.takedown_threshold, "review": cfg.policy.review_threshold,
                  **dict(args.threshold)}
    report = build_report(predictions, thresholds,
                          dataset={"root": str(dataset.root), "layout": dataset.layout,
                                   "videos": len(dataset.videos), "fake": dataset.fakes},
                          model={**scorer.model, "key": scorer.model_key, "model_file": str(spec.source)},
                          calibration=calibration, no_face_score=args.no_face_score)
    report["run"] = {"scored_now": run.scored_now, "resumed": len(predictions) - run.scored_now,
                     "torn_last_line_dropped": run.torn_last_line}
    if _draw_curves(predictions, report, args.out / ROC_FILE, args.no_face_score,
                    title=f"{dataset.layout}: {dataset.root.name}"):
        report["roc_curve"] = ROC_FILE
    (args.out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _print_summary(report, args.out)
    return 0


def _draw_curves(predictions, report: dict, path: Path, no_face_score: float | None, title: str) -> bool:
    """The video- and frame-level ROC curves that the data allows; False if none."""
    from worker.evaluation.report import face_arrays, roc_points, video_arrays
    from worker.evaluation.roc_plot import draw_roc

    curves = []
    for name, (labels, scores) in (("video", video_arrays(predictions, no_face_score)),
                                   ("frame", face_arrays(predictions))):
        points = roc_points(labels, scores)
        if points is not None:
            curves.append((f"{name} level, AUC {report[f'{name}_level']['auc']:.3f}", *points))
    if curves:
        draw_roc(curves, path, title=title)
    return bool(curves)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _print_summary(report: dict, out: Path) -> None:
    v = report["videos"]
    print(f"videos: {v['total']} ({v['scored']} scored, {v['no_faces']} without faces, "
          f"{v['failed']} failed to fetch/decode)")
    for level in ("video_level", "frame_level"):
        f = report[level]
        print(f"{level:<12} n={f['count']:<6} AUC {_fmt(f['auc'])}  EER {_fmt(f['eer'])}  "
              f"AP {_fmt(f['average_precision'])}  log-loss {_fmt(f['log_loss'])}")
        for name, at in f["at_thresholds"].items():
            print(f"{'':<12} {name}>={at['threshold']:g}: precision {_fmt(at['precision'])}  "
                  f"recall {_fmt(at['recall'])}")
    print(f"report: {out / REPORT_FILE}")


def cmd_calibrate(args) -> int:
    from worker.models.spec import ModelFileError, load_model_spec, save_calibration

    path = args.predictions / PREDICTIONS_FILE if args.predictions.is_dir() else args.predictions
    try:
        if not path.is_file():
            raise PredictionsError(f"{path} does not exist")
        rows = read_predictions(path).predictions
        keys = sorted({p.model for p in rows})
        key = args.model_key or (keys[0] if len(keys) == 1 else None)
        if key is None or key not in keys:
            raise PredictionsError(f"{path} holds predictions of the models {keys}: name one with --model-key")
        if args.model_file is not None:
            pinned = load_model_spec(args.model_file).checkpoint_sha256s
            if set(key_checkpoints(key)) != set(pinned):
                raise CalibrationError(f"the predictions were made with the checkpoints {key_checkpoints(key)}, "
                                       f"{args.model_file} pins others {pinned}")
        latest = {p.key: p for p in rows if p.model == key}.values()
        raw, labels = [], []
        for p in latest:
            if p.status == SCORED or (p.status == NO_FACES and args.no_face_score is not None):
                raw.append(p.video_score if p.status == SCORED else args.no_face_score)
                labels.append(p.label)
        report = path.parent / REPORT_FILE
        dataset = str(path.parent)
        if report.is_file():
            dataset = json.loads(report.read_text(encoding="utf-8")).get("dataset", {}).get("root", dataset)
        calibration = fit_calibration(raw, labels, args.method, args.target_precision,
                                      args.target_recall, dataset=dataset, confidence=args.confidence)
        if args.model_file is not None:
            save_calibration(args.model_file, calibration)
    except (PredictionsError, CalibrationError, ModelFileError) as exc:
        return _fail(exc)
    import tomli_w

    print(tomli_w.dumps({"calibration": calibration.to_mapping()}), end="")
    if args.model_file is not None:
        print(f"# written to {args.model_file}", file=sys.stderr)
    return 0

