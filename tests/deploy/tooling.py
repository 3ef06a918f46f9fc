"""What the deploy/ tests share: the repository's paths, the external tools they run, the
metric names the worker really exports, and a reader of metric names in PromQL.

The tools (promtool, prometheus, kustomize) come from deploy/dev/bootstrap.sh. A missing
tool fails the test that needs it, never skips it.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from worker.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES_DIR = DEPLOY / "prometheus" / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
PROMTOOL_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))


def tool(name: str) -> str:
    """The path of an external tool: beside this Python (.venv/bin) or on PATH."""
    beside = Path(sys.executable).parent / name
    path = str(beside) if beside.is_file() else shutil.which(name)
    assert path, f"{name} is not installed: run deploy/dev/bootstrap.sh (it installs it)"
    return path


def run_tool(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([tool(args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def rule_groups() -> list[dict]:
    return [group for path in RULE_FILES for group in load_yaml(path)["groups"]]


def recording_rules() -> dict[str, str]:
    return {rule["record"]: rule["expr"] for group in rule_groups() for rule in group["rules"]
            if "record" in rule}


def alerting_rules() -> dict[str, dict]:
    return {rule["alert"]: rule for group in rule_groups() for rule in group["rules"] if "alert" in rule}


_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "info": ("_info",),
             "histogram": ("_bucket", "_count", "_sum", "_created"),
             "summary": ("", "_count", "_sum", "_created")}


def exported_metric_names() -> set[str]:
    """Every sample name the worker can put on /metrics, GPU gauges included, read from a
    real WorkerMetrics rather than written down, so a renamed metric fails the tests."""
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    metrics.watch_gpu(lambda: (0, 1), lambda: 0.0)
    return {family.name + suffix for family in registry.collect() for suffix in _SUFFIXES[family.type]}


_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_WORD = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
             "unless", "offset", "inf", "nan", "Inf", "NaN"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, labels or keywords).

    Enough PromQL for our rules and dashboards: strings, label matchers, ranges and
    grouping clauses are blanked, Grafana's $variables are dropped, and what is left that
    is not a function call or a keyword is a metric name.
    """
    text = _STRINGS.sub(" ", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    return {word for word, call in _WORD.findall(text) if not call and word not in _KEYWORDS}


def dashboard_panels(dashboard: dict) -> list[dict]:
    """Every panel of a Grafana dashboard, those nested in collapsed rows included."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable of a dashboard."""
    queries = [(f"panel {p['title']!r} {t['refId']}", t["expr"]) for p in dashboard_panels(dashboard)
               for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            # label_values(metric, label): the metric is the first argument.
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            queries.append((f"variable {variable['name']}", match.group(1) if match else query))
    return queries
