"""The package layout holds: data flows one way, and the pure core stays pure.

Each package of ``worker/`` has a rank; a module may import its own package and packages
of lower rank only, so no import runs back up (a lower package never depends on one that
depends on it). ``worker.core`` ranks lowest with the config and the logs: it imports no
other package of the worker, and nothing of kafka, torch or decord, not even through
what it imports (checked in a fresh interpreter).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).resolve().parents[2] / "worker"

RANKS = {
    "config": 0, "logs": 0, "core": 0,
    "batching": 1, "media": 1, "metrics": 1,
    "faces": 2, "provenance": 2,
    "models": 3,
    "bank": 4,
    "orders": 5,
    "runtime": 5,
    "app": 6,
    "evaluation": 7, "training": 7,
    "testing": 8,
    "__main__": 9,
}
HEAVY = ("kafka", "torch", "decord")


def _package(module: str) -> str | None:
    """``worker.core.events`` -> ``core``; the root package itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "worker" else None


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (the layout test reads absolute ones)"
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names if node.module == "worker"]
    return found


def _modules():
    for path in sorted(WORKER.rglob("*.py")):
        rel = path.relative_to(WORKER.parent).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        yield path, ".".join(parts)


def test_every_package_has_a_rank_and_the_top_level_stays_small():
    packages = {_package(module) for _, module in _modules()} - {None, "__init__"}
    assert packages <= set(RANKS), f"give these a rank: {packages - set(RANKS)}"
    top_level = [p.name for p in WORKER.glob("*.py")]
    assert len(top_level) <= 8, top_level


def test_no_import_runs_back_up():
    upward = []
    for path, module in _modules():
        own = _package(module)
        if own is None:
            continue
        for imported in _imports(path):
            other = _package(imported)
            if other is None or other == own or other not in RANKS:
                continue
            if RANKS[other] >= RANKS[own]:
                upward.append(f"{module} imports {imported}")
    assert upward == []


def test_the_core_imports_no_other_package_and_nothing_heavy():
    for path, module in _modules():
        if _package(module) != "core":
            continue
        for imported in _imports(path):
            assert _package(imported) in (None, "core"), f"{module} imports {imported}"
            assert imported.split(".")[0] not in HEAVY, f"{module} imports {imported}"


def test_importing_the_whole_core_loads_no_kafka_torch_or_decord():
    core = sorted(module for _, module in _modules() if _package(module) == "core")
    code = (f"import sys; import {', '.join(core)}; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=WORKER.parent, capture_output=True,
                            text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
