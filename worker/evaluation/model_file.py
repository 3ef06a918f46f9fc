"""Reading a model file's checkpoint hashes and writing its ``[calibration]`` table.

Stop-gap until the model-file loader (``worker.models.spec``, with ``save_calibration``)
lands: the integrator should replace these functions with it. The file is parsed with
tomllib and written back whole with tomli-w, atomically (a crash leaves the old file);
comments in the file are not kept.
"""
from __future__ import annotations

import os
import tempfile
import tomllib
from pathlib import Path

import tomli_w

from ..calibration import Calibration, CalibrationError


def _read(model_file: Path) -> dict:
    try:
        return tomllib.loads(Path(model_file).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CalibrationError(f"cannot read model file {model_file}: {exc}") from None


def checkpoint_hashes(model_file: Path) -> tuple[str, ...]:
    """The sha256 of each ``[[checkpoints]]`` entry."""
    entries = _read(model_file).get("checkpoints", [])
    hashes = tuple(str(e.get("sha256", "")).lower() for e in entries if isinstance(e, dict))
    if not hashes or not all(hashes):
        raise CalibrationError(f"model file {model_file} has no [[checkpoints]] with a sha256")
    return hashes


def read_calibration(model_file: Path) -> Calibration | None:
    """The file's ``[calibration]`` table, or None when it has none (uncalibrated)."""
    table = _read(model_file).get("calibration")
    return None if table is None else Calibration.from_mapping(table)


def write_calibration(model_file: Path, calibration: Calibration) -> None:
    """Replace the file's ``[calibration]`` table, keeping every other key."""
    model_file = Path(model_file)
    document = _read(model_file)
    document["calibration"] = calibration.to_mapping()
    text = tomli_w.dumps(document)
    fd, tmp = tempfile.mkstemp(prefix=model_file.name, dir=model_file.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(tmp, model_file.stat().st_mode & 0o777)
        os.replace(tmp, model_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
