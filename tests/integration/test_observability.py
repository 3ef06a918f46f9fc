"""A real Prometheus (Debian's binary) scrapes a real worker that processes the sample videos
through the real Kafka broker, with deploy/prometheus/rules loaded: every recording rule
gets data, every rule evaluates without error, and the latency quantiles are plausible."""
from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from worker.core.events import upload_event
from worker.metrics import LATENCY_BUCKETS
from worker.testing.samples import sample_video

from ..deploy.tooling import DASHBOARDS, RULES_DIR, dashboard_queries, recording_rules, tool
from .conftest import publish, read_outputs, running_worker

pytestmark = pytest.mark.kafka

SAMPLES = ("carphone_pristine.mp4", "bigbuckbunny.mp4", "bikes.mp4")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusAPI:
    def __init__(self, url: str):
        self.url = url

    def get(self, path: str, **params) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def wait_for(self, what: str, check, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus: {what} not within {timeout_s:.0f} s")
            time.sleep(0.5)


@contextmanager
def prometheus(tmp_path: Path, target: str):
    """Prometheus on a free loopback port, scraping ``target`` every second, with the
    project's rules evaluated every second; stopped (and its storage dropped) at the end."""
    port = _free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES_DIR / "*.yml")],
        "scrape_configs": [{"job_name": "moderation-worker", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT)
    api = PrometheusAPI(f"http://127.0.0.1:{port}")
    try:
        def ready():
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(f"{api.url}/-/ready", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False
        api.wait_for("/-/ready", ready, timeout_s=30)
        yield api
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _bucket_bounds(low: float, high: float) -> tuple[float, float]:
    """The latency bucket boundaries just below ``low`` and just above ``high``."""
    below = max((b for b in LATENCY_BUCKETS if b <= low), default=0.0)
    above = min((b for b in LATENCY_BUCKETS if b >= high), default=float("inf"))
    return below, above


def test_prometheus_scrapes_the_worker_and_every_rule_has_data(kafka_config, pipeline_without_model,
                                                              tmp_path):
    cfg = kafka_config
    def missing(n: int):
        return b"missing", upload_event(f"missing-{n}", (tmp_path / "no-such.mp4").as_uri(), "tester",
                                        event_id=f"evt-missing-{n}")
    # A dead letter before and one after the videos. The worker creates the label child of
    # moderation_dead_letters_total on its first increment, so Prometheus first sees it at
    # 1 and rate() cannot count that first one: only the later one shows in the rate.
    events = [missing(1)]
    events += [(name.encode(), upload_event(name, sample_video(name).as_uri(), "tester", event_id=f"evt-{name}"))
               for name in SAMPLES]
    events.append(missing(2))
    started = time.monotonic()
    with running_worker(cfg, pipeline_without_model) as port, prometheus(tmp_path, f"127.0.0.1:{port}") as api:
        # Scraping before the videos arrive, so that rate() sees the counters rise.
        api.wait_for("the worker scraped", lambda: [s for s in api.query('up{job="moderation-worker"} == 1')],
                     timeout_s=20)
        publish(cfg, events)
        outputs = read_outputs(cfg, expected=len(events), timeout_s=120, settle_s=1.0)
        assert len(outputs) == len(events)

        records = recording_rules()

        def every_rule_has_data():
            return all(api.query(name) for name in records)
        api.wait_for("data for every recording rule", every_rule_has_data, timeout_s=30)
        results = {name: api.query(name) for name in records}

        groups = api.get("/api/v1/rules")["groups"]
        loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
        assert set(records) <= set(loaded)
        bad = {name: rule.get("lastError") for name, rule in loaded.items() if rule["health"] != "ok"}
        assert not bad, bad

        # Every dashboard query is valid PromQL for this Prometheus, with Grafana's variables
        # filled in as Grafana would.
        for path in DASHBOARDS:
            for where, expr in dashboard_queries(json.loads(path.read_text())):
                filled = (expr.replace("$namespace", ".*").replace("$__rate_interval", "1m")
                          .replace("$__range", "5m"))
                api.query(filled)
    assert time.monotonic() - started < 180

    def value(name: str) -> float:
        (sample,) = results[name]
        return float(sample["value"][1])

    p50, p95, p99 = (value(f"moderation:end_to_end_latency_seconds:{q}_5m") for q in ("p50", "p95", "p99"))
    assert 0 < p50 <= p95 <= p99 < 600
    latencies = [record["data"]["latency_seconds"]["end_to_end"] for topic, _, record in outputs
                 if topic == cfg.kafka.verdict_topic]
    assert len(latencies) == len(SAMPLES)
    # Quantiles of a histogram fall in the buckets that hold the observations; the metric is
    # taken a moment after the verdict's own figure (after the commit), hence the margin.
    low, high = _bucket_bounds(min(latencies), max(latencies) + 5.0)
    assert low <= p50 and p99 <= high, (latencies, p50, p99)

    assert value("moderation:verdicts:rate5m") > 0
    assert value("moderation:dead_letters:rate5m") > 0
    assert 0 < value("moderation:dead_letter_ratio:rate5m") < 1
    (lag,) = results["moderation:consumer_lag_records:sum"]
    assert lag["metric"]["topic"] == cfg.kafka.upload_topic
    decisions = {s["metric"]["decision"] for s in results["moderation:decisions:rate5m"]}
    assert decisions <= {"takedown", "review", "allow"} and decisions
