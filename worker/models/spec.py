"""The model file: one TOML file per model, the single place a detector is described.

A published detector only keeps its published accuracy when it runs exactly as its authors
ran it, so everything that shapes a score lives next to the checkpoint hashes, not in the
worker's config: backend and architecture, preprocessing (frames per video, face detector
scale and thresholds, crop margin, input size, normalisation), the per-track aggregation,
and the optional ``[calibration]`` fitted on the platform's own data. The worker's config
only names the file (``model.config``). Format: docs/model-file.md. Plain Python
(tomllib), no torch.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import tomli_w

from worker.core.aggregation import AGGREGATIONS, Aggregation
from worker.core.calibration import Calibration, CalibrationError

BACKENDS = ("dfdc_winner", "timm", "torchscript")
RESIZES = ("isotropic",)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ModelFileError(ValueError):
    """The model file is missing, not TOML, or breaks the format; the message says where."""


@dataclass(frozen=True)
class CheckpointRef:
    path: Path      # absolute (resolved against the model file's folder)
    sha256: str     # lower-case hex, checked before the file is unpickled


@dataclass(frozen=True)
class Preprocessing:
    input_size: int
    frames_per_video: int = 32
    crop_margin: float = 1 / 3          # share of the box's width/height added on each side
    resize: str = "isotropic"           # long side to input_size, zero pad to a square
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    detector_scale: float = 0.5         # frames are scaled by this before MTCNN
    detector_thresholds: tuple[float, float, float] = (0.7, 0.8, 0.8)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    backend: str
    architecture: str
    checkpoints: tuple[CheckpointRef, ...]
    preprocessing: Preprocessing
    aggregation: Aggregation
    calibration: Calibration | None
    source: Path                        # the model file itself

    @property
    def checkpoint_sha256s(self) -> tuple[str, ...]:
        return tuple(c.sha256 for c in self.checkpoints)


_TOP_KEYS = {"name", "version", "backend", "architecture", "checkpoints", "preprocessing",
             "aggregation", "calibration"}
_PRE_KEYS = {"frames_per_video", "input_size", "crop_margin", "resize", "mean", "std",
             "detector_scale", "detector_thresholds"}


def load_model_spec(path: Path | str) -> ModelSpec:
    """Read and validate a model file; raises :class:`ModelFileError` naming the bad key."""
    path = Path(path).resolve()
    try:
        table = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"model file {path} is not TOML: {exc}") from None
    try:
        return _spec(table, path)
    except ModelFileError as exc:
        raise ModelFileError(f"model file {path}: {exc}") from None


def _spec(table: Mapping[str, Any], path: Path) -> ModelSpec:
    _no_unknown(table, _TOP_KEYS, "the top level")
    backend = _text(table, "backend")
    if backend not in BACKENDS:
        raise ModelFileError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    architecture = str(table.get("architecture", ""))
    if backend != "torchscript" and not architecture:
        raise ModelFileError(f"backend {backend} needs an architecture (a timm model name)")
    checkpoints = table.get("checkpoints")
    if not isinstance(checkpoints, list) or not checkpoints:
        raise ModelFileError("needs at least one [[checkpoints]] table with path and sha256")
    refs = tuple(_checkpoint(entry, i, path.parent) for i, entry in enumerate(checkpoints))
    calibration = None
    if "calibration" in table:
        if not isinstance(table["calibration"], Mapping):
            raise ModelFileError("[calibration] must be a table")
        try:
            calibration = Calibration.from_mapping(table["calibration"])
        except CalibrationError as exc:
            raise ModelFileError(f"[calibration]: {exc}") from None
    return ModelSpec(name=_text(table, "name"), version=_text(table, "version"), backend=backend,
                     architecture=architecture, checkpoints=refs,
                     preprocessing=_preprocessing(table.get("preprocessing")),
                     aggregation=_aggregation(table.get("aggregation")),
                     calibration=calibration, source=path)


def _no_unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = set(table) - known
    if unknown:
        raise ModelFileError(f"unknown key(s) in {where}: {', '.join(sorted(unknown))}")


def _text(table: Mapping[str, Any], key: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ModelFileError(f"{key} must be a non-empty string")
    return value


def _checkpoint(entry: Any, index: int, folder: Path) -> CheckpointRef:
    where = f"[[checkpoints]] #{index + 1}"
    if not isinstance(entry, Mapping):
        raise ModelFileError(f"{where} must be a table")
    _no_unknown(entry, {"path", "sha256"}, where)
    if not isinstance(entry.get("path"), str) or not entry["path"]:
        raise ModelFileError(f"{where} needs a path")
    sha = entry.get("sha256")
    if not isinstance(sha, str) or not _SHA256.match(sha.strip().lower()):
        raise ModelFileError(f"{where} needs sha256, 64 hex digits (`sha256sum FILE`)")
    return CheckpointRef(path=(folder / entry["path"]).resolve(), sha256=sha.strip().lower())


def _number(table: Mapping[str, Any], key: str, where: str, default: Any, kind=float):
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ModelFileError(f"{where}.{key} must be {'an integer' if kind is int else 'a number'}, not {value!r}")
    if not math.isfinite(value):
        raise ModelFileError(f"{where}.{key} must be finite")
    return kind(value)


def _triple(table: Mapping[str, Any], key: str, default: tuple) -> tuple[float, float, float]:
    value = table.get(key, list(default))
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ModelFileError(f"preprocessing.{key} must be a list of three numbers")
    return tuple(float(v) for v in value)


def _preprocessing(table: Any) -> Preprocessing:
    if not isinstance(table, Mapping):
        raise ModelFileError("needs a [preprocessing] table (at least input_size)")
    _no_unknown(table, _PRE_KEYS, "[preprocessing]")
    if "input_size" not in table:
        raise ModelFileError("preprocessing.input_size is required")
    pre = Preprocessing(
        input_size=_number(table, "input_size", "preprocessing", None, int),
        frames_per_video=_number(table, "frames_per_video", "preprocessing", 32, int),
        crop_margin=_number(table, "crop_margin", "preprocessing", 1 / 3),
        resize=str(table.get("resize", "isotropic")),
        mean=_triple(table, "mean", IMAGENET_MEAN), std=_triple(table, "std", IMAGENET_STD),
        detector_scale=_number(table, "detector_scale", "preprocessing", 0.5),
        detector_thresholds=_triple(table, "detector_thresholds", (0.7, 0.8, 0.8)),
    )
    problems = []
    if not 16 <= pre.input_size <= 2048:
        problems.append("input_size must be between 16 and 2048")
    if pre.frames_per_video < 1:
        problems.append("frames_per_video must be at least 1")
    if not 0 <= pre.crop_margin <= 2:
        problems.append("crop_margin must be between 0 and 2")
    if pre.resize not in RESIZES:
        problems.append(f"resize must be one of {RESIZES}")
    if any(s <= 0 for s in pre.std):
        problems.append("std must be positive")
    if not 0 < pre.detector_scale <= 1:
        problems.append("detector_scale must be in (0, 1]")
    if not all(0 <= t <= 1 for t in pre.detector_thresholds):
        problems.append("detector_thresholds must lie in [0, 1]")
    if problems:
        raise ModelFileError("[preprocessing]: " + "; ".join(problems))
    return pre


def _aggregation(table: Any) -> Aggregation:
    if table is None:
        raise ModelFileError(f"needs an [aggregation] table (method: {', '.join(AGGREGATIONS)})")
    if not isinstance(table, Mapping):
        raise ModelFileError("[aggregation] must be a table")
    _no_unknown(table, {"method", "threshold"}, "[aggregation]")
    method = table.get("method")
    if method not in AGGREGATIONS:
        raise ModelFileError(f"aggregation.method must be one of {', '.join(AGGREGATIONS)}, not {method!r}")
    threshold = _number(table, "threshold", "aggregation", 0.8)
    if not 0 <= threshold <= 1:
        raise ModelFileError("aggregation.threshold must lie in [0, 1]")
    return Aggregation(method=method, threshold=threshold)


# --- writing ---------------------------------------------------------------------------------

def write_model_file(path: Path | str, *, name: str, version: str, backend: str, architecture: str,
                     checkpoints: Sequence[tuple[Path | str, str]], preprocessing: Mapping[str, Any],
                     aggregation: Mapping[str, Any], calibration: Calibration | None = None) -> ModelSpec:
    """Write a model file (checkpoint paths relative to it where they can be) and read it back,
    validated. For tools that produce models (training, tests, benchmarks)."""
    path = Path(path).resolve()
    entries = []
    for checkpoint, sha in checkpoints:
        checkpoint = Path(checkpoint).resolve()
        try:
            shown = checkpoint.relative_to(path.parent).as_posix()
        except ValueError:
            shown = str(checkpoint)
        entries.append({"path": shown, "sha256": sha})
    table: dict[str, Any] = {"name": name, "version": version, "backend": backend,
                             "architecture": architecture, "checkpoints": entries,
                             "preprocessing": dict(preprocessing), "aggregation": dict(aggregation)}
    if calibration is not None:
        table["calibration"] = calibration.to_mapping()
    path.write_text(tomli_w.dumps(table))
    return load_model_spec(path)



_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(#.*)?$")


def _is_calibration(name: str) -> bool:
    name = name.replace('"', "").replace("'", "").replace(" ", "")
    return name == "calibration" or name.startswith("calibration.")


def save_calibration(model_file: Path | str, calibration: Calibration | None) -> None:
    """Replace the model file's ``[calibration]`` table (None removes it).

    The rest of the file, comments included, is kept as written; the new table goes at the
    end. The result is read back and checked before it atomically replaces the file.
    """
    path = Path(model_file)
    text = path.read_text()
    load_model_spec(path)  # refuse to edit a file that is already broken
    kept, skipping = [], False
    for line in text.splitlines(keepends=True):
        header = _HEADER.match(line)
        if header:
            skipping = _is_calibration(header.group(1))
        if not skipping:
            kept.append(line)
    body = "".join(kept).rstrip() + "\n"
    if calibration is not None:
        body += "\n" + tomli_w.dumps({"calibration": calibration.to_mapping()})
    written = tomllib.loads(body)
    if written.get("calibration") != (None if calibration is None else tomllib.loads(
            tomli_w.dumps({"c": calibration.to_mapping()}))["c"]):
        raise ModelFileError(f"model file {path}: cannot rewrite its [calibration] table "
                             "(is it written as dotted keys?); edit it by hand")
    fd, tmp = tempfile.mkstemp(prefix=".model-", suffix=".toml", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as stream:
            stream.write(body)
        spec = load_model_spec(tmp)
        if spec.calibration != calibration:
            raise ModelFileError(f"model file {path}: the rewritten calibration does not read back")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
