"""The Prometheus rules in deploy/prometheus: promtool's own checks and unit tests, and the
ties between the rules, the worker's metrics, the scrape config and the runbook."""
from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, generate_latest

from worker.metrics import WorkerMetrics

from .tooling import (DEPLOY, PROMTOOL_TESTS, RULE_FILES, ROOT, alerting_rules, exported_metric_names,
                      load_yaml, metric_names, recording_rules, rule_groups, run_tool)

README = DEPLOY / "README.md"


def test_promtool_checks_the_rule_files():
    assert RULE_FILES, "no rule files in deploy/prometheus/rules"
    result = run_tool("promtool", "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    assert PROMTOOL_TESTS, "no promtool tests in deploy/prometheus/tests"
    result = run_tool("promtool", "test", "rules", *map(str, PROMTOOL_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(PROMTOOL_TESTS), result.stdout


def _alert_tests() -> list[dict]:
    return [case for path in PROMTOOL_TESTS for test in load_yaml(path)["tests"]
            for case in test.get("alert_rule_test", [])]


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not():
    cases = _alert_tests()
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    alerts = set(alerting_rules())
    assert alerts - fires == set(), "alerts never shown firing in a promtool test"
    assert alerts - quiet == set(), "alerts never shown staying quiet in a promtool test"
    assert {case["alertname"] for case in cases} <= alerts, "a promtool test names no real alert"


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section():
    headings = set(re.findall(r"^### (\w+)$", README.read_text(), flags=re.MULTILINE))
    for name, rule in alerting_rules().items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        assert annotations["runbook_url"] == f"deploy/README.md#{name.lower()}", name
        assert name in headings, f"deploy/README.md has no runbook section '### {name}'"


def test_rules_read_only_metrics_the_worker_exports_or_rules_record():
    exported = exported_metric_names()
    recorded = set(recording_rules())
    # `up` is written by Prometheus itself for every scrape target.
    known = exported | recorded | {"up"}
    for group in rule_groups():
        for rule in group["rules"]:
            unknown = metric_names(rule["expr"]) - known
            assert not unknown, f"{rule.get('record') or rule.get('alert')} reads unknown metrics {unknown}"
    assert all(name.startswith("moderation:") for name in recorded)


def test_a_rule_reading_one_of_its_own_group_comes_after_it():
    """Prometheus evaluates a group's rules in order (groups run independently): a rule
    that reads a later rule of its group would see that rule's previous value."""
    for group in rule_groups():
        own = {rule["record"] for rule in group["rules"] if "record" in rule}
        seen: set[str] = set()
        for rule in group["rules"]:
            assert metric_names(rule["expr"]) & own <= seen, rule
            if "record" in rule:
                seen.add(rule["record"])


def test_the_slo_threshold_is_a_bucket_boundary_the_worker_exposes():
    registry = CollectorRegistry()
    WorkerMetrics(registry).end_to_end.observe(1.0)
    exposed = set(re.findall(r'moderation_end_to_end_latency_seconds_bucket\{le="([^"]+)"\}',
                             generate_latest(registry).decode()))
    thresholds = {le for expr in recording_rules().values()
                  for le in re.findall(r'moderation_end_to_end_latency_seconds_bucket\{le="([^"]+)"\}', expr)}
    assert thresholds == {"120.0"}
    assert thresholds <= exposed


def test_metric_names_reader():
    expr = ('histogram_quantile(0.99, sum by (namespace, le) (rate(a_bucket{le="1.0", x=~"y|z"}[5m])))'
            ' / on (namespace) group_left b:c:d offset 5m + 1e3 * absent(up{job="j"} == 1)'
            ' or sum without (stage) (increase(e_total[$__rate_interval])) unless f > bool 0')
    assert metric_names(expr) == {"a_bucket", "b:c:d", "up", "e_total", "f"}


def test_promtool_checks_the_scrape_config(tmp_path):
    """promtool checks deploy/prometheus/prometheus.yml and the rule files it loads.

    Debian's Prometheus is built without Kubernetes service discovery, so its promtool
    rejects `kubernetes_sd_configs`: that job is checked here by structure, and promtool
    checks the rest.
    """
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    assert config["rule_files"] == ["rules/*.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    pods = jobs.pop("kubernetes-pods")
    assert pods["kubernetes_sd_configs"] == [{"role": "pod"}]
    job_relabel = [r for r in pods["relabel_configs"] if r.get("target_label") == "job"]
    assert job_relabel and job_relabel[0]["source_labels"] == [
        "__meta_kubernetes_pod_label_app_kubernetes_io_name"]
    # The alerts select job="moderation-worker": the static job has that name.
    assert "moderation-worker" in jobs

    config["scrape_configs"] = list(jobs.values())
    config["rule_files"] = [str(DEPLOY / "prometheus" / "rules" / "*.yml")]
    checked = tmp_path / "prometheus.yml"
    import yaml

    checked.write_text(yaml.safe_dump(config))
    result = run_tool("promtool", "check", "config", str(checked))
    assert result.returncode == 0, result.stdout + result.stderr
    for path in RULE_FILES:
        assert str(path.relative_to(ROOT)).endswith(path.name)
        assert path.name in result.stdout, result.stdout
