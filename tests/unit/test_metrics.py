"""/livez, /readyz and /metrics on a real HTTP server bound to a free port."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from worker.metrics import STAGES, Health, HealthServer, WorkerMetrics

CHECKS = ("model_loaded", "kafka_reachable", "partitions_assigned")


@pytest.fixture
def served():
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    health = Health(metrics)
    server = HealthServer(registry, health, "127.0.0.1", 0).start()
    try:
        yield server, health, registry, metrics
    finally:
        server.stop()


def get(server: HealthServer, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def test_the_server_binds_a_free_port(served):
    assert served[0].port > 0


def test_livez_answers_at_once(served):
    server = served[0]
    assert get(server, "/livez")[0] == 200
    assert get(server, "/livez?probe=kubelet")[0] == 200


def test_readyz_waits_for_every_check(served):
    server, health, registry, _ = served
    status, content_type, body = get(server, "/readyz")
    assert (status, content_type) == (503, "application/json")
    assert json.loads(body) == {check: False for check in CHECKS}
    for done, check in enumerate(CHECKS, start=1):
        health.set(check, True)
        status, _, body = get(server, "/readyz")
        expected = 200 if done == len(CHECKS) else 503
        assert status == expected, (check, body)
        assert registry.get_sample_value("moderation_ready") == (1 if expected == 200 else 0)
    assert json.loads(body) == {check: True for check in CHECKS}

    health.set("partitions_assigned", False)  # a rebalance takes the partitions away
    assert get(server, "/readyz")[0] == 503
    assert get(server, "/livez")[0] == 200


def test_metrics_are_exposed(served):
    server = served[0]
    status, content_type, body = get(server, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert "moderation_end_to_end_latency_seconds_bucket" in body
    assert 'moderation_end_to_end_latency_seconds_bucket{le="600.0"}' in body
    for stage in STAGES:
        assert f'moderation_stage_duration_seconds_count{{stage="{stage}"}}' in body
    assert 'moderation_build_info{' in body


def test_metrics_reflect_observations(served):
    server, metrics = served[0], served[3]
    metrics.end_to_end.observe(0.2)
    body = get(server, "/metrics")[2]
    assert "moderation_end_to_end_latency_seconds_count 1.0" in body
    assert 'moderation_end_to_end_latency_seconds_bucket{le="0.25"} 1.0' in body


def test_unknown_path_is_404(served):
    server = served[0]
    assert get(server, "/")[0] == 404
    assert get(server, "/healthz")[0] == 404


def test_health_rejects_unknown_checks():
    with pytest.raises(KeyError):
        Health().set("gpu_warm", True)


def test_livez_fails_when_the_poll_loop_stalls():
    from worker.metrics import Health

    now = [100.0]
    health = Health(stall_after_s=60, clock=lambda: now[0])
    assert health.alive() == (True, "starting")  # model loading: alive, not ready
    health.beat()
    now[0] += 59
    assert health.alive()[0] is True
    now[0] += 2
    ok, why = health.alive()
    assert ok is False and "61 s" in why
    health.beat()
    assert health.alive()[0] is True


def test_bank_size_is_read_from_the_index_at_scrape_time():
    from worker.bank.index import BankIndex

    from .test_bank_matching import random_hash, video

    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    index = BankIndex()
    metrics.watch_bank(index.stats)

    def entries(bank: str) -> float:
        return registry.get_sample_value("moderation_bank_entries", {"bank": bank})

    assert (entries("positive"), entries("negative")) == (0, 0)
    index.add("taken-down", video(random_hash(), random_hash(), random_hash()))
    index.add("known-good", video(random_hash()), negative=True)
    assert (entries("positive"), entries("negative")) == (1, 1)
    assert registry.get_sample_value("moderation_bank_index_rows") >= 4
    index.remove("taken-down")
    assert (entries("positive"), entries("negative")) == (0, 1)
