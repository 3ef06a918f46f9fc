"""The Grafana dashboards in deploy/grafana: the fields Grafana needs to load them from
files, and queries that read only what the worker exports or the rules record.

Grafana itself cannot be installed here (no Debian package, nothing on PyPI), so the JSON
is checked by structure, not loaded into a Grafana."""
from __future__ import annotations

import json
import re

import pytest

from .tooling import (DASHBOARDS, DEPLOY, dashboard_panels, dashboard_queries, exported_metric_names,
                      load_yaml, metric_names, recording_rules)

PROVISIONING = DEPLOY / "grafana" / "provisioning"


@pytest.fixture(params=DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def dashboard(request) -> dict:
    return json.loads(request.param.read_text())


def test_there_is_a_dashboard():
    assert [p.name for p in DASHBOARDS] == ["moderation-worker.json"]


def test_the_dashboard_has_what_grafana_needs(dashboard):
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    assert dashboard["title"] and dashboard["time"]["from"] and "id" not in dashboard
    ids = [p["id"] for p in dashboard_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard_panels(dashboard):
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid) and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["type"] in ("timeseries", "stat", "table", "bargauge", "gauge")
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"], panel["title"]


def test_panels_do_not_overlap(dashboard):
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard_panels(dashboard):
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


def test_queries_read_only_exported_metrics_and_defined_recording_rules(dashboard):
    exported = exported_metric_names()
    recorded = set(recording_rules())
    for where, expr in dashboard_queries(dashboard):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        rules = {n for n in names if ":" in n}
        assert rules <= recorded, f"{where}: recording rules not in deploy/prometheus/rules: {rules - recorded}"
        assert names - rules <= exported, f"{where}: metrics the worker does not export: {names - rules - exported}"


def test_the_dashboard_shows_what_the_sres_asked_for(dashboard):
    exprs = " ".join(expr for _, expr in dashboard_queries(dashboard))
    panels = {p["title"]: p for p in dashboard_panels(dashboard)}
    for needed in ("moderation:stage_duration_seconds", "moderation_consumer_lag_records",
                   "moderation_decisions_total", "moderation_build_info", "moderation:dead_letter_ratio",
                   "moderation:end_to_end_latency_seconds:p99_5m", "moderation_gpu_utilization_ratio",
                   "moderation_gpu_memory_used_bytes", "moderation_videos_in_flight"):
        assert needed in exprs, needed
    lag = panels["Consumer lag per partition"]["targets"][0]
    assert "partition" in lag["legendFormat"]
    reasons = panels["Top dead-letter reasons"]["targets"][0]["expr"]
    assert reasons.startswith("topk(") and "by (reason)" in reasons
    model = panels["Model in use"]["targets"][0]
    assert "model_name" in model["expr"] and "checkpoint_sha256" in model["expr"]
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert any("RED" in r for r in rows) and sum("USE" in r for r in rows) >= 2


def test_provisioning_files():
    (datasources,) = PROVISIONING.joinpath("datasources").glob("*.yaml")
    (source,) = load_yaml(datasources)["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    (providers,) = PROVISIONING.joinpath("dashboards").glob("*.yaml")
    (provider,) = load_yaml(providers)["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
