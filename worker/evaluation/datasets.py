"""Labelled video datasets in the layouts platforms and papers use, as one list of items.

An evaluation needs, per video, its path and whether it is fake; the public benchmarks
each store that differently (folder names, a list file, JSON metadata), and a platform's
own labels usually come as a CSV. Each reader turns its layout into :class:`LabelledVideo`
items (label 1 = fake, 0 = real, as everywhere in the worker) with a group id where the
layout says which source identity a video comes from, so that splits can keep a person's
real and fake videos together. Layout facts come from the datasets' own documentation:

- FaceForensics++ (ondyari/FaceForensics, its download script's folder map):
  ``original_sequences/{youtube,actors}/<compression>/videos/*.mp4`` are real,
  ``manipulated_sequences/<method>/<compression>/videos/*.mp4`` are fake, methods
  Deepfakes, DeepFakeDetection, Face2Face, FaceShifter, FaceSwap, NeuralTextures,
  compression raw, c23 or c40. Names are ``000.mp4`` / ``000_003.mp4`` (target_source) and
  ``01__scene.mp4`` / ``01_02__scene__ID.mp4`` (actors): the group is the target's id.
- Celeb-DF v2: ``List_of_testing_videos.txt``, lines ``<label> <relative path>`` where
  1 means REAL and 0 synthesised (the opposite of ours); ``Celeb-synthesis/id0_id1_0000.mp4``
  fakes the real ``Celeb-real/id0_0000.mp4``: the group is ``id0``.
- DFDC: ``metadata.json`` per folder, ``{"<file>.mp4": {"label": "FAKE"|"REAL",
  "original": "<file>.mp4"|null, "split": ...}}``; the group is the original's name.
- CSV: a header with ``path`` and ``label`` (0/1 or real/fake; an optional ``group``),
  paths relative to the CSV file.

Pure Python: no decoding here; a missing file is an item that fails at decode time, so
the evaluation counts it rather than stopping.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

FFPP = "faceforensics"
CELEB_DF = "celeb-df"
DFDC = "dfdc"
CSV = "csv"
LAYOUTS = (FFPP, CELEB_DF, DFDC, CSV)

FFPP_SOURCES = ("youtube", "actors")
FFPP_METHODS = ("Deepfakes", "DeepFakeDetection", "Face2Face", "FaceShifter", "FaceSwap",
                "NeuralTextures")
FFPP_COMPRESSIONS = ("raw", "c23", "c40")
CELEB_DF_LIST = "List_of_testing_videos.txt"
DFDC_METADATA = "metadata.json"
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".webm", ".mkv")


class DatasetError(ValueError):
    """The dataset path does not hold the layout asked for, or its label files are bad."""


@dataclass(frozen=True)
class LabelledVideo:
    path: Path          # absolute
    key: str            # the path relative to the dataset root, POSIX: stable across moves
    label: int          # 1 = fake, 0 = real
    group: str | None = None


@dataclass(frozen=True)
class Dataset:
    root: Path
    layout: str
    videos: tuple[LabelledVideo, ...]

    @property
    def fakes(self) -> int:
        return sum(v.label for v in self.videos)


def _item(root: Path, path: Path, label: int, group: str | None) -> LabelledVideo:
    return LabelledVideo(path=path, key=path.relative_to(root).as_posix(), label=label, group=group)


def _videos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def read_faceforensics(root: Path, compression: str | None = None) -> list[LabelledVideo]:
    """Every ``videos`` folder of the originals and manipulations (one compression if given)."""
    if compression is not None and compression not in FFPP_COMPRESSIONS:
        raise DatasetError(f"FaceForensics++ compression is one of {FFPP_COMPRESSIONS}, not {compression!r}")
    compressions = (compression,) if compression else FFPP_COMPRESSIONS
    found: list[LabelledVideo] = []
    for top, names, label in (("original_sequences", FFPP_SOURCES, 0),
                              ("manipulated_sequences", FFPP_METHODS, 1)):
        for name in names:
            for level in compressions:
                folder = root / top / name / level / "videos"
                if folder.is_dir():
                    found += [_item(root, p, label, p.stem.split("_")[0]) for p in _videos_in(folder)]
    if not found:
        raise DatasetError(
            f"{root} holds no FaceForensics++ videos: expected original_sequences/<{'|'.join(FFPP_SOURCES)}>/"
            f"<{'|'.join(compressions)}>/videos/*.mp4 and manipulated_sequences/<method>/<compression>/videos/")
    return found


def read_celeb_df(root: Path) -> list[LabelledVideo]:
    listing = root / CELEB_DF_LIST
    if not listing.is_file():
        raise DatasetError(f"{root} has no {CELEB_DF_LIST} (the Celeb-DF v2 test list)")
    found: list[LabelledVideo] = []
    for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or parts[0] not in ("0", "1"):
            raise DatasetError(f"{listing}:{number}: expected '<1 real|0 fake> <relative path>', got {line!r}")
        rel = Path(parts[1].strip())
        stem = rel.stem
        group = stem.split("_")[0] if rel.parts[0].startswith("Celeb") else stem
        found.append(_item(root, root / rel, 1 - int(parts[0]), group))
    if not found:
        raise DatasetError(f"{listing} lists no videos")
    return found


def _dfdc_folder(root: Path, folder: Path) -> list[LabelledVideo]:
    metadata = folder / DFDC_METADATA
    try:
        table = json.loads(metadata.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{metadata}: cannot read DFDC metadata: {exc}") from None
    if not isinstance(table, dict):
        raise DatasetError(f"{metadata}: expected an object of file name -> {{label, original, split}}")
    found = []
    for name, entry in sorted(table.items()):
        label = entry.get("label") if isinstance(entry, dict) else None
        if label not in ("FAKE", "REAL"):
            raise DatasetError(f"{metadata}: {name!r} has label {label!r}, expected 'FAKE' or 'REAL'")
        original = entry.get("original") or name
        found.append(_item(root, folder / name, int(label == "FAKE"), Path(original).stem))
    return found


def read_dfdc(root: Path) -> list[LabelledVideo]:
    """``root/metadata.json``, or one per sub-folder (the training parts)."""
    if (root / DFDC_METADATA).is_file():
        folders = [root]
    else:
        folders = sorted(p for p in root.iterdir() if (p / DFDC_METADATA).is_file())
    if not folders:
        raise DatasetError(f"{root} has no {DFDC_METADATA}, nor sub-folders with one (DFDC layout)")
    found = [item for folder in folders for item in _dfdc_folder(root, folder)]
    if not found:
        raise DatasetError(f"the DFDC metadata under {root} lists no videos")
    return found


_CSV_LABELS = {"0": 0, "1": 1, "real": 0, "fake": 1}


def read_csv(csv_path: Path) -> list[LabelledVideo]:
    """A CSV with a ``path,label`` header (and optionally ``group``)."""
    root = csv_path.parent
    with open(csv_path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        if "path" not in fields or "label" not in fields:
            raise DatasetError(f"{csv_path}: the header must name 'path' and 'label', it has {fields}")
        found = []
        for number, row in enumerate(reader, 2):
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
            label = _CSV_LABELS.get(row["label"].lower())
            if label is None or not row["path"]:
                raise DatasetError(f"{csv_path}:{number}: need a path and a label 0/1/real/fake, "
                                   f"got {row['path']!r}, {row['label']!r}")
            path = (root / row["path"]).resolve()
            found.append(LabelledVideo(path=path, key=Path(row["path"]).as_posix(), label=label,
                                       group=row.get("group") or None))
    if not found:
        raise DatasetError(f"{csv_path} lists no videos")
    return found


def detect_layout(path: Path) -> str:
    """The layout a path holds, from its marker files and folders."""
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return CSV
        if path.name == CELEB_DF_LIST:
            return CELEB_DF
        if path.name == DFDC_METADATA:
            return DFDC
        raise DatasetError(f"{path} is a file but not a CSV, {CELEB_DF_LIST} or {DFDC_METADATA}")
    if not path.is_dir():
        raise DatasetError(f"{path} does not exist")
    if (path / "original_sequences").is_dir() or (path / "manipulated_sequences").is_dir():
        return FFPP
    if (path / CELEB_DF_LIST).is_file():
        return CELEB_DF
    if (path / DFDC_METADATA).is_file() or any((p / DFDC_METADATA).is_file()
                                               for p in path.iterdir() if p.is_dir()):
        return DFDC
    csvs = sorted(path.glob("*.csv"))
    if len(csvs) == 1:
        return CSV
    raise DatasetError(
        f"cannot tell the layout of {path}: expected original_sequences/ or manipulated_sequences/ "
        f"(FaceForensics++), {CELEB_DF_LIST} (Celeb-DF v2), {DFDC_METADATA} (DFDC) or one CSV "
        f"file with path,label; or name it with --layout")


def load_dataset(path: Path, layout: str | None = None, compression: str | None = None) -> Dataset:
    """The labelled videos at ``path`` (a folder, or the CSV/list/metadata file itself)."""
    path = Path(path).resolve()
    layout = layout or detect_layout(path)
    if layout not in LAYOUTS:
        raise DatasetError(f"layout is one of {LAYOUTS}, not {layout!r}")
    if compression is not None and layout != FFPP:
        raise DatasetError(f"a compression level only applies to FaceForensics++, not to {layout}")
    dataset = _load(path, layout, compression)
    seen: set[str] = set()
    for video in dataset.videos:
        if video.key in seen:
            raise DatasetError(f"{video.key} is listed twice in {path}")
        seen.add(video.key)
    return dataset


def _load(path: Path, layout: str, compression: str | None) -> Dataset:
    if layout == CSV:
        csv_path = path if path.is_file() else None
        if csv_path is None:
            csvs = sorted(path.glob("*.csv")) if path.is_dir() else []
            if len(csvs) != 1:
                raise DatasetError(f"{path}: name the CSV file itself (found {len(csvs)} CSV files)")
            csv_path = csvs[0]
        return Dataset(csv_path.parent, CSV, tuple(read_csv(csv_path)))
    root = path.parent if path.is_file() else path
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    readers: dict[str, Callable[[Path], list[LabelledVideo]]] = {
        FFPP: lambda r: read_faceforensics(r, compression), CELEB_DF: read_celeb_df, DFDC: read_dfdc}
    return Dataset(root, layout, tuple(readers[layout](root)))
