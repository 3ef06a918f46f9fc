"""Prometheus metrics on an injected registry, and the /metrics, /livez, /readyz endpoints.

Liveness and readiness are separate so that a slow model load (the worker's cold start)
makes the pod unready, never dead: /livez answers as soon as the process serves HTTP,
/readyz answers 503 until the model is loaded and Kafka partitions are assigned.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from worker import __version__
from worker.core.credentials import STATES as CREDENTIAL_STATES
from worker.core.policy import KINDS as LABEL_KINDS
from worker.core.dead_letters import REASONS

log = logging.getLogger("worker.health")
PREFIX = "moderation"
# From a short clip on a GPU (50 ms) to a long video queued behind others (10 min).
# A legal order's execution, against deadlines of 2 and 3 hours.
ORDER_BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 5400, 7200, 9000, 10800, 14400, 21600)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
# Every (status, kind) a label decision can have.
LABEL_SERIES = (("none", "none"),) + tuple((status, kind) for status in ("apply", "pending_review")
                                            for kind in LABEL_KINDS)
STAGES = ("fetch", "credentials", "decode", "hash_match", "detect_faces", "classify", "publish")


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.end_to_end = Histogram(
            f"{PREFIX}_end_to_end_latency_seconds",
            "From the upload record's Kafka timestamp (the platform's clock) to the verdict "
            "acknowledged by Kafka; values outside the window are counted, not observed.",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.claimed_end_to_end = Histogram(
            f"{PREFIX}_claimed_end_to_end_latency_seconds",
            "From the producer's uploaded_at (its claim) to the verdict acknowledged by Kafka; "
            "values outside the window are counted, not observed.",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.latency_out_of_window = Counter(
            f"{PREFIX}_latency_out_of_window",
            "Latencies not observed because their start, on this clock, lies outside the window "
            "(worker.latency_window_s in the past, worker.clock_skew_s in the future) or is missing.",
            ["clock"], registry=registry)
        self.stage = Histogram(
            f"{PREFIX}_stage_duration_seconds", "Time spent in one pipeline stage for one video.",
            ["stage"], buckets=LATENCY_BUCKETS, registry=registry)
        self.events = Counter(f"{PREFIX}_events_consumed", "Upload event records consumed.",
                              registry=registry)
        self.decisions = Counter(f"{PREFIX}_decisions", "Verdicts published, by decision.",
                                 ["decision"], registry=registry)
        self.credentials = Counter(
            f"{PREFIX}_credentials", "Uploads whose C2PA content credentials were read, by state "
            "(absent, unreadable, invalid, valid, trusted).", ["state"], registry=registry)
        self.orders = Counter(
            f"{PREFIX}_orders", "Legal orders executed, by status (done, partial, failed) and whether "
            "they were within their deadline.", ["status", "within_deadline"], registry=registry)
        self.order_completion = Histogram(
            f"{PREFIX}_order_completion_seconds", "A legal order's receipt (its received_at) to its "
            "execution.", buckets=ORDER_BUCKETS, registry=registry)
        self.device_fallback = Gauge(
            f"{PREFIX}_device_fallback", "1 when model.device = auto found no usable GPU and the worker "
            "runs on the CPU (the log says why).", registry=registry)
        # Exported (at 0) by every worker, so that a dashboard and the alerts see them.
        self.orders_open = Gauge(
            f"{PREFIX}_orders_open", "Legal orders this worker is executing now (orders still waiting "
            "on the topic are its consumer lag).", registry=registry)
        self.order_oldest_open = Gauge(
            f"{PREFIX}_order_oldest_open_seconds", "Seconds since the oldest open order was received "
            "(0 when none is open).", registry=registry)
        self.order_deadline_share = Gauge(
            f"{PREFIX}_order_open_deadline_share", "The largest share of its deadline an open order has "
            "used (0.5: half its time gone; 0 when none is open).", registry=registry)
        self.labels_decided = Counter(
            f"{PREFIX}_labels", "Synthetic-content label decisions, by status (none, apply, "
            "pending_review) and kind (ai_generated, ai_altered; none with status none).",
            ["status", "kind"], registry=registry)
        self.dead_letters = Counter(f"{PREFIX}_dead_letters", "Dead-letter records published, by reason.",
                                    ["reason"], registry=registry)
        self.faces = Counter(f"{PREFIX}_faces_detected", "Face detections in sampled frames.",
                             registry=registry)
        self.fetched_bytes = Counter(f"{PREFIX}_fetched_bytes", "Bytes of video fetched.",
                                     registry=registry)
        self.frames_decoded = Counter(f"{PREFIX}_frames_decoded", "Frames decoded for the pipeline.",
                                      registry=registry)
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size", "Items per model call: frames for face detection, faces for classification.",
            ["stage"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=registry)
        self.publish_failures = Counter(
            f"{PREFIX}_publish_failures", "Outputs Kafka did not acknowledge; the event is retried.",
            registry=registry)
        self.in_flight = Gauge(f"{PREFIX}_videos_in_flight", "Videos being processed now.",
                               registry=registry)
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "From the upload record's Kafka timestamp to the worker starting it.",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.buffered = Gauge(f"{PREFIX}_events_buffered", "Events fetched from Kafka and not yet started.",
                              registry=registry)
        self.lag = Gauge(f"{PREFIX}_consumer_lag_records",
                         "Upload records not yet done, per assigned partition (end offset minus done).",
                         ["topic", "partition"], registry=registry)
        self.rebalances = Counter(f"{PREFIX}_rebalances", "Partition assignments and revocations.",
                                  ["kind"], registry=registry)
        self.transaction_aborts = Counter(f"{PREFIX}_transaction_aborts", "Kafka transactions aborted.",
                                          registry=registry)
        self.deadline_exceeded = Counter(
            f"{PREFIX}_video_deadline_exceeded", "Videos abandoned after worker.video_deadline_s.",
            registry=registry)
        self.ready = Gauge(f"{PREFIX}_ready", "1 when /readyz answers 200.", registry=registry)
        self.build = Info(f"{PREFIX}_build", "Worker version and the model it runs.", registry=registry)
        self.assigned_partitions = Gauge(f"{PREFIX}_assigned_partitions",
                                         "Upload-topic partitions assigned to this worker.", registry=registry)
        self.topic_partitions = Gauge(f"{PREFIX}_topic_partitions", "Partitions of the upload topic.",
                                      ["topic"], registry=registry)
        # Every label value exists from the start at 0, so rate() counts the first event too.
        for stage in STAGES:
            self.stage.labels(stage)
        for decision in ("takedown", "review", "allow"):
            self.decisions.labels(decision)
        for state in CREDENTIAL_STATES:
            self.credentials.labels(state)
        for status in ("done", "partial", "failed"):
            for within in ("true", "false"):
                self.orders.labels(status, within)
        for status, kind in LABEL_SERIES:
            self.labels_decided.labels(status, kind)
        for reason in sorted(REASONS):
            self.dead_letters.labels(reason)
        for clock in ("kafka_record", "uploaded_at"):
            self.latency_out_of_window.labels(clock)
        for kind in ("assigned", "revoked"):
            self.rebalances.labels(kind)
        for stage in ("detect_faces", "classify"):
            self.batch_size.labels(stage)
        self.build.info({"version": __version__, "model_name": "none", "checkpoint_sha256": "none"})

    def watch_gpu(self, memory: Callable[[], tuple[int, int]],
                  utilisation: Callable[[], float | None]) -> None:
        """Export GPU memory (used, total bytes) and utilisation (0..1) read at scrape time."""
        used = Gauge(f"{PREFIX}_gpu_memory_used_bytes", "GPU memory in use.", registry=self.registry)
        total = Gauge(f"{PREFIX}_gpu_memory_total_bytes", "GPU memory in all.", registry=self.registry)
        busy = Gauge(f"{PREFIX}_gpu_utilization_ratio", "GPU busy time over the last sample period.",
                     registry=self.registry)
        used.set_function(lambda: memory()[0])
        total.set_function(lambda: memory()[1])
        busy.set_function(lambda: utilisation() or 0.0)

    def watch_device_calls(self, oldest_seconds: Callable[[], float]) -> None:
        """Export how long the oldest model call in progress has been running."""
        running = Gauge(f"{PREFIX}_model_call_running_seconds",
                        "How long the oldest face-detection or classification call in progress has "
                        "been running (0 when none is); /livez fails past worker.device_call_deadline_s.",
                        registry=self.registry)
        running.set_function(oldest_seconds)

    def watch_orders(self, open_count: Callable[[], int], oldest_seconds: Callable[[], float],
                     deadline_share: Callable[[], float]) -> None:
        """Read the legal orders this worker is executing at scrape time."""
        self.orders_open.set_function(open_count)
        self.order_oldest_open.set_function(oldest_seconds)
        self.order_deadline_share.set_function(deadline_share)

    def watch_bank(self, stats: Callable[[], Any]) -> None:
        """Export the hash bank's size, read at scrape time from ``stats()`` (an ``IndexStats``)."""
        entries = Gauge(f"{PREFIX}_bank_entries", "Hash-bank entries this worker holds, by bank.",
                        ["bank"], registry=self.registry)
        rows = Gauge(f"{PREFIX}_bank_index_rows", "Hash rows in this worker's bank index "
                     "(tombstoned rows included until the next rebuild).", registry=self.registry)
        def positive() -> int:
            now = stats()
            return now.entries - now.negative_entries

        entries.labels("positive").set_function(positive)
        entries.labels("negative").set_function(lambda: stats().negative_entries)
        rows.set_function(lambda: stats().rows)

    def set_model(self, name: str, checkpoint_sha256: str) -> None:
        self.build.info({"version": __version__, "model_name": name,
                         "checkpoint_sha256": checkpoint_sha256})


class Health:
    """What /readyz and /livez report.

    Readiness is a set of checks, each set by whoever owns it. Liveness is the poll loop's
    heartbeat and the model calls' deadline: once the loop has started, a loop that has not
    turned for ``stall_after_s`` (blocked in a Kafka call that never returns, say) makes /livez
    fail, and so does a model call (``oldest_call()``: its stage and seconds so far, from
    :class:`worker.runtime.watchdog.DeviceCalls`) running longer than ``device_call_deadline_s``
    (a hung GPU or CPU call), so the orchestrator restarts the process; before the loop
    starts (model loading) the process counts as alive.
    """

    def __init__(self, metrics: WorkerMetrics | None = None, stall_after_s: float = 300.0,
                 extra_checks: tuple[str, ...] = (), clock: Callable[[], float] = time.monotonic,
                 oldest_call: Callable[[], tuple[str, float] | None] = lambda: None,
                 device_call_deadline_s: float = 180.0):
        self._lock = threading.Lock()
        self._checks = {"model_loaded": False, "kafka_reachable": False, "partitions_assigned": False}
        self._checks.update({name: False for name in extra_checks})
        self._metrics = metrics
        self.stall_after_s = stall_after_s
        self.device_call_deadline_s = device_call_deadline_s
        self._oldest_call = oldest_call
        self._clock = clock
        self._last_beat: float | None = None
        self._reported: str | None = None

    def beat(self) -> None:
        self._last_beat = self._clock()

    def alive(self) -> tuple[bool, str]:
        last = self._last_beat
        if last is None:
            return True, "starting"
        idle = self._clock() - last
        if idle > self.stall_after_s:
            return self._dead(f"the poll loop has not turned for {idle:.0f} s")
        oldest = self._oldest_call()
        if oldest is not None and oldest[1] > self.device_call_deadline_s:
            return self._dead(f"a {oldest[0]} model call has been running for {oldest[1]:.1f} s "
                              f"(deadline {self.device_call_deadline_s:g} s)")
        self._reported = None
        return True, "ok"

    def _dead(self, why: str) -> tuple[bool, str]:
        kind = why.split(" has", 1)[0]
        if self._reported != kind:  # once per episode, not once per probe
            self._reported = kind
            log.error("liveness fails: %s; the orchestrator should restart this worker", why)
        return False, why

    def set(self, check: str, ok: bool) -> None:
        with self._lock:
            if check not in self._checks:
                raise KeyError(check)
            self._checks[check] = ok
            if self._metrics is not None:
                self._metrics.ready.set(1 if all(self._checks.values()) else 0)

    def report(self) -> tuple[bool, dict[str, bool]]:
        with self._lock:
            checks = dict(self._checks)
        return all(checks.values()), checks


class HealthServer:
    """Serves /metrics, /livez and /readyz on a background thread."""

    def __init__(self, registry: CollectorRegistry, health: Health, host: str, port: int):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/livez":
                    ok, why = health.alive()
                    self._send(200 if ok else 503, why.encode() + b"\n", "text/plain")
                elif path == "/readyz":
                    ok, checks = health.report()
                    self._send(200 if ok else 503, json.dumps(checks).encode(), "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # probes every few seconds would flood the log
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name="health-http",
                                        daemon=True)

    def start(self) -> "HealthServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
