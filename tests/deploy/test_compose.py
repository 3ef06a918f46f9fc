"""deploy/docker-compose.yml, the laptop stack, checked by structure: no Docker engine runs
here (and CI has none), so it is never started. What is checked is what breaks first in
practice: mounts of files that do not exist, services that disagree on ports, names and
paths, and a worker config the worker would refuse."""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

from worker.config import load_config

from .tooling import DEPLOY, RULE_FILES, load_yaml, run_tool

COMPOSE = DEPLOY / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


def _binds(service: dict) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts (short syntax)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            out[target] = (COMPOSE.parent / source).resolve()
    return out


def _host_path(service: dict, container_path: str) -> Path:
    """Where a path inside the container comes from on the host, through its bind mounts."""
    path = PurePosixPath(container_path)
    for target, source in _binds(service).items():
        if path == PurePosixPath(target) or PurePosixPath(target) in path.parents:
            return source / path.relative_to(target)
    raise AssertionError(f"{container_path} is not bind-mounted")


def _worker_config(compose: dict):
    worker = compose["services"]["worker"]
    env = {k: str(v) for k, v in worker.get("environment", {}).items()}
    return load_config(_host_path(worker, "/etc/moderation/worker.toml"), env=env)


def test_the_stack_has_its_services(compose):
    assert set(compose["services"]) == {"kafka", "topics", "worker", "prometheus", "grafana"}
    assert compose["services"]["kafka"]["image"] == "apache/kafka:4.1.1"
    assert compose["services"]["topics"]["image"] == "apache/kafka:4.1.1"
    for name, service in compose["services"].items():
        assert service.get("image"), f"{name}: pin an image"
        assert not service["image"].endswith(":latest") and ":" in service["image"], name


def test_every_bind_mount_points_at_a_file_in_the_repository(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in compose.get("volumes", {}), f"{name}: undeclared volume {source}"
    build = compose["services"]["worker"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert (context / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()


def test_ports_are_published_on_loopback_only(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+", port), f"{name}: {port}"


def test_kafka_is_a_kraft_broker_the_worker_can_reach(compose):
    env = compose["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    cfg = _worker_config(compose)
    assert f"INTERNAL://{cfg.kafka.bootstrap_servers}" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    created = "\n".join(compose["services"]["topics"]["command"])
    for topic in (cfg.kafka.upload_topic, cfg.kafka.verdict_topic, cfg.kafka.dead_letter_topic):
        assert f" {topic}:" in created, topic


def test_the_worker_runs_as_in_kubernetes(compose):
    worker = compose["services"]["worker"]
    cfg = _worker_config(compose)
    uid = re.search(r"^USER (\d+:\d+)$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE).group(1)
    assert worker["user"] == uid
    assert worker["read_only"] is True and any(t.startswith("/tmp") for t in worker["tmpfs"])
    assert worker["ports"] == [f"127.0.0.1:{cfg.metrics.port}:{cfg.metrics.port}"]
    grace = int(worker["stop_grace_period"].rstrip("s"))
    assert 15 <= grace - cfg.worker.shutdown_deadline_s <= 60
    assert cfg.media.file_roots == ("/mnt/uploads",)
    _host_path(worker, "/mnt/uploads")
    _host_path(worker, "/models")
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_prometheus_scrapes_the_worker_with_the_rules(compose, tmp_path):
    prometheus = compose["services"]["prometheus"]
    config_path = _host_path(prometheus, "/etc/prometheus/prometheus.yml")
    config = load_yaml(config_path)
    cfg = _worker_config(compose)
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "moderation-worker"  # the alerts select on it
    assert job["static_configs"] == [{"targets": [f"worker:{cfg.metrics.port}"]}]
    (rules,) = config["rule_files"]
    assert sorted(_host_path(prometheus, str(PurePosixPath(rules).parent)).glob("*.yml")) == RULE_FILES
    # promtool checks the config and the rules it loads, with the mounts resolved.
    config["rule_files"] = [str(_host_path(prometheus, str(PurePosixPath(rules).parent)) / "*.yml")]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config))
    result = run_tool("promtool", "check", "config", str(checked))
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard(compose):
    grafana = compose["services"]["grafana"]
    datasources = _host_path(grafana, "/etc/grafana/provisioning/datasources")
    dashboards = _host_path(grafana, "/etc/grafana/provisioning/dashboards")
    assert datasources == (DEPLOY / "grafana" / "provisioning" / "datasources").resolve()
    (source,) = load_yaml(next(datasources.glob("*.yaml")))["datasources"]
    url = urlparse(source["url"])
    assert url.hostname == "prometheus" and url.port == 9090
    assert "prometheus" in compose["services"]
    (provider,) = load_yaml(next(dashboards.glob("*.yaml")))["providers"]
    folder = _host_path(grafana, provider["options"]["path"])
    assert folder == (DEPLOY / "grafana" / "dashboards").resolve()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert _host_path(grafana, home).is_file()


def test_the_gpu_override_gives_the_worker_a_gpu():
    override = load_yaml(DEPLOY / "docker-compose.gpu.yml")["services"]["worker"]
    assert override["environment"]["MODERATION_MODEL_DEVICE"] == "cuda"
    (device,) = override["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
