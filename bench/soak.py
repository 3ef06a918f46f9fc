"""Load and soak: drive a real worker process with upload events at a fixed rate, then report.

A load generator, not a test. It publishes a seeded mix of good upload events (the sample
videos) and bad ones (not JSON, schema violation, missing file, not a video, truncated MP4)
at ``--rate`` events/s for ``--duration`` seconds, reads the verdict and dead-letter topics
(read_committed) while it does, and samples the worker's RSS from /proc. The report gives
throughput, end-to-end latency percentiles, RSS over time and its slope, and every input
without exactly one output. Latency is only meaningful below the worker's capacity, so the
report says when the offered rate exceeded it (the backlog then grows, and latency with it).

    .venv/bin/python bench/soak.py --rate 0.8 --duration 600 --bad-ratio 0.2

See bench/README.md.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from worker.config import load_config  # noqa: E402
from worker.core.events import upload_event  # noqa: E402
from worker.runtime.clients import build_admin, build_producer, build_results_consumer, ensure_topics  # noqa: E402
from worker.testing.local_kafka import LocalKafka  # noqa: E402
from worker.testing.samples import sample_dir, sample_video  # noqa: E402

GOOD_VIDEOS = ("carphone_pristine.mp4", "bikes.mp4")
# What each kind of bad event must turn into; a different outcome is reported as a mismatch.
BAD_KINDS = {"not_json": "invalid_json", "schema_violation": "schema_violation",
             "missing_file": "video_not_found", "not_a_video": "not_a_video",
             "truncated_mp4": "video_truncated"}
MIB = 1024 * 1024


# --- what went in, what came out -------------------------------------------------------------

@dataclass
class Sent:
    kind: str                   # a good video's name, or a key of BAD_KINDS
    event_id: str | None        # None where the record has no parseable id
    sent_at: float              # wall clock; good events carry it as uploaded_at
    partition: int = -1
    offset: int = -1


@dataclass
class Result:
    read_at: float
    verdict: bool
    output_id: str
    source_event_id: str | None
    source: tuple[int, int] | None  # dead letters: source partition and offset
    outcome: str                    # the decision, or the dead-letter reason
    worker_end_to_end: float | None = None
    worker_processing: float | None = None


def summarise(record_value: bytes, read_at: float) -> Result:
    """The few fields of an output the report needs; the rest is dropped at once."""
    document = json.loads(record_value)
    data = document["data"]
    if document["type"].startswith("dev.moderation.verdict"):
        latency = data["latency_seconds"]
        return Result(read_at, True, document["id"], data["source_event_id"], None,
                      data["decision"], latency.get("end_to_end"), latency.get("processing"))
    return Result(read_at, False, document["id"], data["source_event_id"],
                  (data["source_partition"], data["source_offset"]), data["reason"])


# --- the load --------------------------------------------------------------------------------

class EventFactory:
    """Good and bad upload events; the bad files live in ``files`` (a folder the worker may read)."""

    def __init__(self, run: str, files: Path, bad_ratio: float, rng: random.Random):
        self.run, self.files, self.bad_ratio, self.rng = run, files, bad_ratio, rng
        self.good = [sample_video(name) for name in GOOD_VIDEOS]
        self.not_a_video = files / "notes.mp4"
        self.not_a_video.write_text("an upload that is a text file, not a video\n")
        clip = sample_video("carphone_pristine.mp4").read_bytes()
        self.truncated = files / "truncated.mp4"
        self.truncated.write_bytes(clip[:len(clip) // 2])  # the mdat box now runs past the end

    def make(self, i: int, uploaded_at: datetime) -> tuple[Sent, bytes, bytes]:
        """Event ``i``: its record (what was sent), Kafka key and value."""
        event_id, video_id = f"soak-{self.run}-{i:07d}", f"soak-video-{i:07d}"
        key = video_id.encode()
        if self.rng.random() >= self.bad_ratio:
            clip = self.rng.choice(self.good)
            value = upload_event(video_id, clip.as_uri(), "soak", event_id=event_id,
                                 uploaded_at=uploaded_at)
            return Sent(clip.name, event_id, uploaded_at.timestamp()), key, value
        kind = self.rng.choice(sorted(BAD_KINDS))
        if kind == "not_json":
            return Sent(kind, None, uploaded_at.timestamp()), key, b"not JSON " + key
        uri = {"missing_file": (self.files / f"missing-{i}.mp4").as_uri(),
               "not_a_video": self.not_a_video.as_uri(), "truncated_mp4": self.truncated.as_uri(),
               "schema_violation": self.good[0].as_uri()}[kind]
        value = upload_event(video_id, uri, "soak", event_id=event_id, uploaded_at=uploaded_at)
        if kind == "schema_violation":  # no video_id: rejected before the worker reads the id
            document = json.loads(value)
            del document["data"]["video_id"]
            return Sent(kind, None, uploaded_at.timestamp()), key, json.dumps(document).encode()
        return Sent(kind, event_id, uploaded_at.timestamp()), key, value


def publish(producer, topic: str, factory: EventFactory, rate: float, duration: float,
            sent: list[Sent]) -> None:
    """Open loop: event ``i`` is due at ``i / rate`` s, whether or not the worker keeps up."""
    count = max(1, math.floor(rate * duration))
    futures = []
    start = time.monotonic()
    for i in range(count):
        due = start + i / rate
        time.sleep(max(0.0, due - time.monotonic()))
        record, key, value = factory.make(i, datetime.now(timezone.utc))
        sent.append(record)
        futures.append(producer.send(topic, key=key, value=value))
    producer.flush(timeout=60)
    for record, future in zip(sent, futures):
        meta = future.get(timeout=30)
        record.partition, record.offset = meta.partition, meta.offset


class ResultsReader(threading.Thread):
    """Reads every committed verdict and dead letter until stopped (or ``max_s`` passes)."""

    def __init__(self, kafka_cfg, max_s: float):
        super().__init__(name="results-reader", daemon=True)
        # fetch_max_wait_ms bounds how late a result can be read after it is committed.
        self.consumer = build_results_consumer(kafka_cfg, fetch_max_wait_ms=100)
        self.results: list[Result] = []
        self.stop = threading.Event()
        self.deadline = time.monotonic() + max_s
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                for records in self.consumer.poll(timeout_ms=100).values():
                    read_at = time.time()
                    self.results.extend(summarise(r.value, read_at) for r in records)
        except BaseException as exc:  # reported; the run goes on to its report
            self.error = exc
        finally:
            self.consumer.close()


# --- the worker process ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_worker(kafka_cfg, worker_id: str, metrics_port: int, worker_argv: list[str],
                 log_path: Path) -> subprocess.Popen:
    env = {**os.environ,
           "MODERATION_KAFKA_BOOTSTRAP_SERVERS": kafka_cfg.bootstrap_servers,
           "MODERATION_KAFKA_GROUP_ID": kafka_cfg.group_id,
           "MODERATION_KAFKA_UPLOAD_TOPIC": kafka_cfg.upload_topic,
           "MODERATION_KAFKA_VERDICT_TOPIC": kafka_cfg.verdict_topic,
           "MODERATION_KAFKA_DEAD_LETTER_TOPIC": kafka_cfg.dead_letter_topic,
           "MODERATION_METRICS_HOST": "127.0.0.1",
           "MODERATION_METRICS_PORT": str(metrics_port),
           "MODERATION_WORKER_ID": worker_id}
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "worker", "run", *worker_argv], cwd=REPO,
                                env=env, stdout=log, stderr=subprocess.STDOUT)


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def wait_ready(proc: subprocess.Popen, port: int, timeout_s: float) -> float:
    """Seconds until /readyz answered 200 (model loaded, partitions assigned)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode} before it was ready")
        if http_get(port, "/readyz")[0] == 200:
            return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"the worker was not ready within {timeout_s:.0f}s")


COUNTERS = ("events_consumed", "transaction_aborts", "publish_failures", "video_deadline_exceeded",
            "rebalances", "dead_letters", "decisions")
TIMINGS = {"stage_duration_seconds": "stage_mean_s", "queue_wait_seconds": "queue_wait_mean_s"}


def worker_counters(port: int) -> dict[str, float]:
    """The worker's own counters from /metrics, and the mean seconds of each pipeline stage
    (``stage_mean_s{publish}`` is the delivery: the Kafka transaction); empty if it does not
    answer."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = http_get(port, "/metrics")
    if status != 200:
        return {}
    out, timings = {}, {}
    for family in text_string_to_metric_families(body.decode()):
        name = family.name.removeprefix("moderation_")
        for sample in family.samples:
            labels = ",".join(sample.labels.values())
            labels = f"{{{labels}}}" if labels else ""
            if name in COUNTERS and sample.name.endswith("_total"):
                out[f"{name}_total{labels}"] = sample.value
            elif name in TIMINGS and sample.name.endswith(("_sum", "_count")):
                part = sample.name.rsplit("_", 1)[1]
                timings.setdefault(f"{TIMINGS[name]}{labels}", {})[part] = sample.value
    out.update({key: round(t["sum"] / t["count"], 3) for key, t in timings.items() if t.get("count")})
    return out


def stop_worker(proc: subprocess.Popen, timeout_s: float) -> tuple[int, float]:
    """SIGTERM, then SIGKILL after ``timeout_s``; the exit code and seconds it took."""
    started = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    return proc.returncode, time.monotonic() - started


def _status_fields(pid: int | str) -> dict[str, str] | None:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    return dict(line.split(":", 1) for line in lines if ":" in line)


def _kib(fields: dict[str, str], name: str) -> int:
    return int(fields.get(name, "0 kB").split()[0])


def children_memory(pid: int) -> dict:
    """The worker's child processes (its sandboxed decoders): how many, their VmRSS summed,
    and the largest VmRSS and VmHWM (peak resident) of one of them, in MiB."""
    rss, hwm = [], []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _status_fields(entry.name)
        if fields is None or fields.get("PPid", "").strip() != str(pid) or "VmRSS" not in fields:
            continue
        rss.append(_kib(fields, "VmRSS") / 1024)
        hwm.append(_kib(fields, "VmHWM") / 1024)
    return {"children": len(rss), "children_rss_mib": sum(rss),
            "child_max_rss_mib": max(rss, default=0.0), "child_max_hwm_mib": max(hwm, default=0.0)}


class Sampler(threading.Thread):
    """Every ``interval_s``: the worker's VmRSS, thread count and CPU time, its decoder
    children's memory (:func:`children_memory`), the machine's load average (other processes
    share the CPUs, and the figures mean less when they do), and the backlog (events sent
    minus results read)."""

    def __init__(self, pid: int, interval_s: float, backlog, progress_s: float, max_s: float):
        super().__init__(name="rss-sampler", daemon=True)
        self.pid, self.interval_s, self.backlog, self.progress_s = pid, interval_s, backlog, progress_s
        self.samples: list[dict] = []  # wall, rss_mib, threads, cpu_s, load1, backlog
        self.stop = threading.Event()
        self.deadline = time.monotonic() + max_s
        self.t0 = time.monotonic()

    def read_status(self) -> dict | None:
        try:
            lines = Path(f"/proc/{self.pid}/status").read_text().splitlines()
            stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            load1 = float(Path("/proc/loadavg").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            return None
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        if "VmRSS" not in fields:  # a zombie: the worker has exited
            return None
        cpu_s = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        return {"rss_mib": int(fields["VmRSS"].split()[0]) / 1024, "threads": int(fields["Threads"]),
                "cpu_s": cpu_s, "load1": load1, **children_memory(self.pid)}

    def run(self) -> None:
        next_progress = self.progress_s
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            status = self.read_status()
            if status is None:
                return
            t = time.monotonic() - self.t0
            self.samples.append({"wall": time.time(), **status, "backlog": self.backlog()})
            if t >= next_progress:
                next_progress += self.progress_s
                s = self.samples[-1]
                print(f"  [{t / 60:5.1f} min] rss {s['rss_mib']:.1f} MiB, threads {s['threads']}, "
                      f"decoders {s['children']} holding {s['children_rss_mib']:.1f} MiB, "
                      f"backlog {s['backlog']}", file=sys.stderr, flush=True)
            self.stop.wait(self.interval_s)


# --- the figures -----------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def spread(values: list[float]) -> dict:
    return {"count": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "p99": percentile(values, 99), "max": max(values) if values else None}


def fit(points: list[tuple[float, float]]) -> tuple[float | None, float | None]:
    """Least-squares slope of (seconds, value) points and its standard error, both per minute."""
    if len(points) < 3 or len({x for x, _ in points}) < 2:
        return None, None
    xs, ys = [x for x, _ in points], [y for _, y in points]
    line = statistics.linear_regression(xs, ys)
    residuals = sum((y - line.intercept - line.slope * x) ** 2 for x, y in points)
    spread_x = sum((x - statistics.fmean(xs)) ** 2 for x in xs)
    return line.slope * 60, math.sqrt(residuals / (len(points) - 2) / spread_x) * 60


def slope_per_min(points: list[tuple[float, float]]) -> float | None:
    return fit(points)[0]


def match(sent: list[Sent], results: list[Result]) -> tuple[dict[int, list[Result]], list[Result]]:
    """Outputs per input index (verdicts by source event id; dead letters by it, else by the
    source partition and offset), and the outputs that match no input."""
    by_event = {s.event_id: i for i, s in enumerate(sent) if s.event_id}
    by_position = {(s.partition, s.offset): i for i, s in enumerate(sent)}
    matched: dict[int, list[Result]] = {}
    unknown = []
    for result in results:
        index = by_event.get(result.source_event_id) if result.source_event_id else None
        if index is None and result.source is not None:
            index = by_position.get(tuple(result.source))
        if index is None:
            unknown.append(result)
        else:
            matched.setdefault(index, []).append(result)
    return matched, unknown


def expected(record: Sent) -> str:
    return BAD_KINDS.get(record.kind, "verdict")


def outcome(result: Result) -> str:
    return "verdict" if result.verdict else result.outcome


def analyse(sent: list[Sent], results: list[Result], samples: list[dict], committed: dict[int, int],
            window: tuple[float, float], rate: float, rss_limit: float) -> dict:
    load_start, load_end = window
    half = load_start + (load_end - load_start) / 2
    matched, unknown = match(sent, results)
    first = {i: min(outs, key=lambda r: r.read_at) for i, outs in matched.items()}
    latency = {i: first[i].read_at - sent[i].sent_at for i in first}
    load_samples = [s for s in samples if load_start <= s["wall"] <= load_end] or samples
    in_window = [r for r in results if load_start <= r.read_at <= load_end]
    return {
        **outcome_figures(sent, results, matched, first, unknown, committed),
        "throughput": throughput_figures(results, in_window, window, rate),
        "latency_s": {"all": spread(list(latency.values())),
                      "verdicts": spread([latency[i] for i in latency if first[i].verdict]),
                      "dead_letters": spread([latency[i] for i in latency if not first[i].verdict])},
        "worker_latency_s": {
            "end_to_end": spread([r.worker_end_to_end for r in results if r.worker_end_to_end is not None]),
            "processing": spread([r.worker_processing for r in results if r.worker_processing is not None])},
        "capacity": capacity_figures(sent, latency, load_samples, load_start, half, rate),
        "rss_mib": rss_figures(samples, load_samples, load_start, half, rss_limit,
                               len(sent) / max(1e-9, load_end - load_start)),
        "decoder_rss_mib": decoder_figures(samples, load_samples, load_start, half, rss_limit,
                                           len(sent) / max(1e-9, load_end - load_start)),
        "machine": machine_figures(load_samples, len(in_window)),
    }


def capacity_figures(sent, latency, load_samples, load_start, half, rate) -> dict:
    """Over capacity when the backlog (sent minus read) grows faster than 5% of the offered
    rate over the second half of the load; latency then grows with it."""
    backlog = slope_per_min([(s["wall"] - load_start, s["backlog"]) for s in load_samples
                             if s["wall"] >= half])
    return {"saturated": backlog is not None and backlog / 60 > 0.05 * rate,
            "backlog_slope_per_min": backlog,
            "latency_slope_s_per_min": slope_per_min([(sent[i].sent_at - load_start, latency[i])
                                                      for i in latency if sent[i].sent_at >= half]),
            "max_backlog": max((s["backlog"] for s in load_samples), default=None)}


def outcome_figures(sent, results, matched, first, unknown, committed) -> dict:
    """What each input turned into; inputs without an output, split by the committed offsets."""
    verdicts = [r for r in results if r.verdict]
    missing = [s for i, s in enumerate(sent) if i not in matched]
    lost_committed = [s for s in missing if s.offset < committed.get(s.partition, 0)]
    mismatched = Counter(f"{s.kind}->{outcome(first[i])}" for i, s in enumerate(sent)
                         if i in first and outcome(first[i]) != expected(s))
    return {
        "events_in": {"total": len(sent), "good": sum(s.kind in GOOD_VIDEOS for s in sent),
                      "by_kind": dict(sorted(Counter(s.kind for s in sent).items()))},
        "verdicts": len(verdicts),
        "decisions": dict(Counter(r.outcome for r in verdicts)),
        "dead_letters": len(results) - len(verdicts),
        "dead_letters_by_reason": dict(sorted(Counter(r.outcome for r in results if not r.verdict).items())),
        "unexpected_outcomes": dict(mismatched),
        "lost": len(missing),
        "lost_after_commit": len(lost_committed),
        "unprocessed_at_stop": len(missing) - len(lost_committed),
        "lost_examples": [f"{s.kind}@{s.partition}/{s.offset}" for s in missing[:5]],
        "duplicates": sum(len(outs) - 1 for outs in matched.values()),
        "duplicate_output_ids": len(results) - len({r.output_id for r in results}),
        "unknown_outputs": len(unknown),
    }


def throughput_figures(results, in_window, window, rate) -> dict:
    load_start, load_end = window
    half = load_start + (load_end - load_start) / 2
    second_half = [r for r in in_window if r.read_at >= half]
    last_read = max((r.read_at for r in results), default=load_end)
    return {
        "offered_events_per_s": rate,
        "results_per_s_during_load": len(in_window) / max(1e-9, load_end - load_start),
        "results_per_s_second_half": len(second_half) / max(1e-9, load_end - half),
        "videos_per_s_second_half": sum(r.verdict for r in second_half) / max(1e-9, load_end - half),
        "results_per_s_overall": len(results) / max(1e-9, last_read - load_start),
    }


def machine_figures(load_samples: list[dict], results: int) -> dict:
    """The worker's CPU use and the machine's load average during the load."""
    if len(load_samples) < 2:
        return {}
    first, last = load_samples[0], load_samples[-1]
    cpu = last["cpu_s"] - first["cpu_s"]
    loads = [s["load1"] for s in load_samples]
    return {"worker_cpu_cores": cpu / max(1e-9, last["wall"] - first["wall"]),
            "worker_cpu_s_per_result": cpu / results if results else None,
            "cpus": os.cpu_count(), "load1_min": min(loads), "load1_median": statistics.median(loads),
            "load1_max": max(loads)}


def rss_trend(slope: float | None, stderr: float | None, limit: float) -> str:
    """growing: the fitted slope is above ``limit`` by more than two standard errors; flat: it
    is at most ``limit``, and the fit is precise enough to say so (standard error at most
    ``limit``); inconclusive otherwise (a short or noisy run)."""
    if slope is None:
        return "unknown"
    if slope - 2 * stderr > limit:
        return "growing"
    return "flat" if slope <= limit and stderr <= limit else "inconclusive"


def rss_figures(samples, load_samples, load_start, half, limit, event_rate) -> dict:
    """RSS at points of the load and its trend. The raw samples swing by tens of MiB with each
    video (decoded frames, MTCNN buffers); each minute's lowest sample, the floor, is what a
    leak raises, so it is given too."""
    middle = min(load_samples, key=lambda s: abs(s["wall"] - half)) if load_samples else None
    slope, stderr = fit([(s["wall"] - load_start, s["rss_mib"]) for s in load_samples if s["wall"] >= half])
    minutes: dict[int, list[float]] = {}
    for s in load_samples:
        minutes.setdefault(int((s["wall"] - load_start) // 60), []).append(s["rss_mib"])
    floors = [(60 * m + 30, min(v)) for m, v in sorted(minutes.items()) if len(v) >= 3]
    return {
        "slope_stderr_mib_per_min": stderr,
        "floor_by_minute": [round(v, 1) for _, v in floors],
        "floor_slope_mib_per_min_second_half": slope_per_min(
            [(t, v) for t, v in floors if load_start + t >= half]),
        "start": load_samples[0]["rss_mib"] if load_samples else None,
        "middle": middle["rss_mib"] if middle else None,
        "end": load_samples[-1]["rss_mib"] if load_samples else None,
        "peak": max((s["rss_mib"] for s in samples), default=None),
        "slope_mib_per_min_second_half": slope,
        "kib_per_event": None if slope is None or not event_rate else slope * 1024 / (event_rate * 60),
        "trend": rss_trend(slope, stderr, limit),
        "limit_mib_per_min": limit,
        "threads": sorted({s["threads"] for s in load_samples}),
        # t_s: seconds since the worker process started
        "timeline": [{"t_s": round(s["wall"] - samples[0]["wall"]), "rss_mib": round(s["rss_mib"], 1),
                      "threads": s["threads"], "cpu_s": round(s["cpu_s"], 1), "load1": s["load1"],
                      "backlog": s["backlog"]} for s in samples],
        "load_window_t_s": [round(load_samples[0]["wall"] - samples[0]["wall"]),
                            round(load_samples[-1]["wall"] - samples[0]["wall"])] if load_samples else None,
    }


def decoder_figures(samples, load_samples, load_start, half, limit, event_rate) -> dict:
    """The same figures for the decoder children's resident memory, summed over the children
    alive at each sample, with the child counts and the largest one child held."""
    def as_rss(rows):
        return [{**s, "rss_mib": s["children_rss_mib"]} for s in rows]
    return {**rss_figures(as_rss(samples), as_rss(load_samples), load_start, half, limit, event_rate),
            "children": sorted({s["children"] for s in load_samples}),
            "child_peak_rss": max((s["child_max_rss_mib"] for s in samples), default=None),
            "child_peak_hwm": max((s["child_max_hwm_mib"] for s in samples), default=None)}


# --- the report ------------------------------------------------------------------------------

def _s(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _spread(name: str, d: dict) -> str:
    return (f"  {name:<22} n={d['count']:<6} p50 {_s(d['p50'])}  p95 {_s(d['p95'])}  "
            f"p99 {_s(d['p99'])}  max {_s(d['max'])}")


def report(f: dict, run: dict) -> str:
    t, cap, rss, m = f["throughput"], f["capacity"], f["rss_mib"], f["machine"]
    kinds = ", ".join(f"{k} {v}" for k, v in f["events_in"]["by_kind"].items())
    bad = f["events_in"]["total"] - f["events_in"]["good"]
    if cap["saturated"]:
        verdict = (f"OVER CAPACITY: the backlog grew {_s(cap['backlog_slope_per_min'], 1)} events/min and "
                   f"latency {_s(cap['latency_slope_s_per_min'])} s/min over the second half; latency "
                   f"figures measure the queue, not the worker. Capacity here is about "
                   f"{_s(t['results_per_s_second_half'])} results/s "
                   f"({_s(t['videos_per_s_second_half'])} videos/s) at this mix")
    else:
        verdict = (f"below capacity: backlog slope {_s(cap['backlog_slope_per_min'], 2)} events/min, "
                   f"latency slope {_s(cap['latency_slope_s_per_min'], 3)} s/min over the second half, "
                   f"max backlog {cap['max_backlog']}")
    timeline = "  ".join(f"{_mmss(p['t_s'])} {p['rss_mib']:.0f}" for p in _every_minute(rss["timeline"]))
    dec = f["decoder_rss_mib"]
    dec_timeline = "  ".join(f"{_mmss(p['t_s'])} {p['rss_mib']:.0f}" for p in _every_minute(dec["timeline"]))
    lines = [
        f"Soak: {run['rate']} events/s for {run['duration']} s, bad ratio {run['bad_ratio']}, "
        f"{run['partitions']} partition(s), seed {run['seed']}",
        f"  broker {run['bootstrap_servers']}; worker args: {' '.join(run['worker_args'])}",
        f"  worker pid {run['worker_pid']} ready after {_s(run['ready_s'], 1)} s; log {run['worker_log']}",
        f"Events in: {f['events_in']['total']} (good {f['events_in']['good']}, bad {bad}): {kinds}",
        f"Verdicts: {f['verdicts']} {f['decisions']}",
        f"Dead letters: {f['dead_letters']} {f['dead_letters_by_reason']}",
        f"Unexpected outcomes: {sum(f['unexpected_outcomes'].values())} {f['unexpected_outcomes'] or ''}",
        f"Lost (inputs without output): {f['lost']} (offset committed without a result: "
        f"{f['lost_after_commit']}; not processed when the worker stopped: {f['unprocessed_at_stop']})"
        + (f" e.g. {f['lost_examples']}" if f["lost"] else ""),
        f"Duplicates: {f['duplicates']} (repeated output ids: {f['duplicate_output_ids']}); "
        f"outputs matching no input: {f['unknown_outputs']}",
        f"Throughput: {_s(t['results_per_s_during_load'])} results/s during the load "
        f"(offered {t['offered_events_per_s']} events/s); second half {_s(t['results_per_s_second_half'])} "
        f"results/s, {_s(t['videos_per_s_second_half'])} videos/s; overall {_s(t['results_per_s_overall'])} results/s",
        f"Capacity: {verdict}",
        "End-to-end latency, s (result read - upload time):",
        _spread("all results", f["latency_s"]["all"]),
        _spread("verdicts", f["latency_s"]["verdicts"]),
        _spread("dead letters", f["latency_s"]["dead_letters"]),
        "Worker's own latency_seconds (verdicts), s:",
        _spread("end_to_end", f["worker_latency_s"]["end_to_end"]),
        _spread("processing", f["worker_latency_s"]["processing"]),
        f"Worker RSS, MiB: start {_s(rss['start'], 1)}, middle {_s(rss['middle'], 1)}, end {_s(rss['end'], 1)}, "
        f"peak {_s(rss['peak'], 1)}; slope over the second half {_s(rss['slope_mib_per_min_second_half'], 3)} "
        f"± {_s(rss['slope_stderr_mib_per_min'], 3)} MiB/min ({_s(rss['kib_per_event'], 2)} KiB/event): "
        + (rss["trend"] if rss["trend"] == "flat" else
           f"{rss['trend'].upper()} (flat is at most {rss['limit_mib_per_min']} MiB/min)")
        + f"; threads {rss['threads']}",
        f"  RSS by minute (m:ss MiB since the worker started; load from {_mmss(rss['load_window_t_s'][0])} "
        f"to {_mmss(rss['load_window_t_s'][1])}): {timeline}",
        f"  RSS floor (lowest sample) by minute of the load, MiB: "
        f"{' '.join(f'{v:.0f}' for v in rss['floor_by_minute'])}; its slope over the second half "
        f"{_s(rss['floor_slope_mib_per_min_second_half'], 3)} MiB/min",
        f"Decoder children (sum of {dec['children']} alive), MiB: start {_s(dec['start'], 1)}, "
        f"middle {_s(dec['middle'], 1)}, end {_s(dec['end'], 1)}, peak {_s(dec['peak'], 1)}; slope over "
        f"the second half {_s(dec['slope_mib_per_min_second_half'], 3)} ± "
        f"{_s(dec['slope_stderr_mib_per_min'], 3)} MiB/min: "
        + (dec["trend"] if dec["trend"] == "flat" else
           f"{dec['trend'].upper()} (flat is at most {dec['limit_mib_per_min']} MiB/min)")
        + f"; one child at most {_s(dec['child_peak_rss'], 1)} MiB resident "
        f"(VmHWM {_s(dec['child_peak_hwm'], 1)})",
        f"  decoders' RSS by minute: {dec_timeline}",
        f"Machine: worker used {_s(m.get('worker_cpu_cores'))} of {m.get('cpus')} cores during the load, "
        f"{_s(m.get('worker_cpu_s_per_result'))} CPU-s per result; load average (1 min) "
        f"min {_s(m.get('load1_min'))} median {_s(m.get('load1_median'))} max {_s(m.get('load1_max'))}",
        f"Worker counters: {run['worker_counters']}",
        f"Worker stop: SIGTERM, exit code {run['worker_exit']} after {_s(run['stop_s'], 1)} s",
    ]
    return "\n".join(lines)


def _mmss(seconds: int) -> str:
    return f"{seconds // 60:d}:{seconds % 60:02d}"


def _every_minute(timeline: list[dict]) -> list[dict]:
    picked, next_t = [], None
    for point in timeline:
        if next_t is None or point["t_s"] >= next_t:
            picked.append(point)
            next_t = (point["t_s"] // 60 + 1) * 60
    if timeline and picked[-1] is not timeline[-1]:
        picked.append(timeline[-1])
    return picked


# --- the run ---------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=0.8, help="upload events per second (default 0.8)")
    p.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    p.add_argument("--bad-ratio", type=float, default=0.2, help="share of bad events (default 0.2)")
    p.add_argument("--partitions", type=int, default=1, help="upload topic partitions (default 1)")
    p.add_argument("--bootstrap-servers", help="a loopback broker to use instead of starting one")
    p.add_argument("--worker-args", default="",
                   help='passed to `python -m worker run`, e.g. "--set media.frames_per_video=8"')
    p.add_argument("--drain-timeout", type=float, default=180,
                   help="seconds to wait for stragglers after the load (default 180)")
    p.add_argument("--startup-timeout", type=float, default=300, help="seconds for the worker to be ready")
    p.add_argument("--rss-interval", type=float, default=2.0, help="seconds between RSS samples")
    p.add_argument("--rss-slope-limit", type=float, default=1.0,
                   help="largest RSS slope, MiB/min over the second half, still called flat")
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds to keep reading after the last result, so a duplicate is seen")
    p.add_argument("--seed", type=int, default=None, help="for the event mix (default: random)")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or not 0 <= args.bad_ratio <= 1 or args.partitions < 1:
        p.error("--rate and --duration must be positive, --bad-ratio in [0, 1], --partitions >= 1")
    if args.bootstrap_servers:
        for server in args.bootstrap_servers.split(","):
            host = server.rsplit(":", 1)[0].strip("[]")
            if host != "localhost" and not _is_loopback(host):
                p.error(f"--bootstrap-servers must be loopback addresses, got {server!r}")
    return args


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def committed_offsets(kafka_cfg) -> dict[int, int]:
    """The worker group's committed offset per upload partition."""
    admin = build_admin(kafka_cfg)
    try:
        offsets = admin.list_group_offsets({kafka_cfg.group_id: None}).get(kafka_cfg.group_id, {})
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items()
            if tp.topic == kafka_cfg.upload_topic}


def wait_for_results(reader: ResultsReader, sent: list[Sent], worker: subprocess.Popen,
                     timeout_s: float, settle_s: float) -> None:
    """Until every input has an output (or ``timeout_s``), then ``settle_s`` of quiet."""
    deadline = time.monotonic() + timeout_s
    while len(reader.results) < len(sent) and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.5)
    quiet_from, seen = time.monotonic(), len(reader.results)
    while time.monotonic() - quiet_from < settle_s and time.monotonic() < deadline + settle_s:
        time.sleep(0.5)
        if len(reader.results) != seen:
            quiet_from, seen = time.monotonic(), len(reader.results)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    run_id = os.urandom(4).hex()
    workdir = Path(tempfile.mkdtemp(prefix=f"soak-{run_id}-"))
    files = workdir / "uploads"
    files.mkdir()
    worker_argv = shlex.split(args.worker_args)
    if not any("media.file_roots" in a for a in worker_argv):  # confine the worker, as in production
        worker_argv += ["--set", f"media.file_roots={sample_dir()},{files}"]
    broker = worker = reader = sampler = None
    try:
        if not args.bootstrap_servers:
            print("Starting a local Kafka broker...", file=sys.stderr, flush=True)
            broker = LocalKafka().start()
        bootstrap = args.bootstrap_servers or broker.bootstrap_servers
        kafka_cfg = load_config(env={}, overrides=[
            f"kafka.bootstrap_servers={bootstrap}", f"kafka.group_id=soak-{run_id}",
            f"kafka.upload_topic=soak-uploads-{run_id}", f"kafka.verdict_topic=soak-verdicts-{run_id}",
            f"kafka.dead_letter_topic=soak-dead-letters-{run_id}"]).kafka
        if not any("bank.topic" in a for a in worker_argv):  # a fresh, empty hash bank per run
            worker_argv += ["--set", f"bank.topic=soak-bank-{run_id}"]
        bank_topic = next(a.split("=", 1)[1] for a in worker_argv if a.startswith("bank.topic="))
        ensure_topics(kafka_cfg, partitions=args.partitions, bank_topic=bank_topic)
        limit_s = args.startup_timeout + args.duration + args.drain_timeout + 300
        reader = ResultsReader(kafka_cfg, max_s=limit_s)
        reader.start()
        sent: list[Sent] = []
        metrics_port = free_port()
        worker = start_worker(kafka_cfg, f"soak-{run_id}", metrics_port, worker_argv,
                              workdir / "worker.log")
        sampler = Sampler(worker.pid, args.rss_interval, lambda: len(sent) - len(reader.results),
                          progress_s=60, max_s=limit_s)
        sampler.start()
        print(f"Worker pid {worker.pid} loading (log {workdir / 'worker.log'})...", file=sys.stderr, flush=True)
        ready_s = wait_ready(worker, metrics_port, args.startup_timeout)
        print(f"Ready after {ready_s:.1f} s; publishing {args.rate}/s for {args.duration:.0f} s",
              file=sys.stderr, flush=True)
        factory = EventFactory(run_id, files, args.bad_ratio, random.Random(seed))
        producer = build_producer(kafka_cfg)
        load_start = time.time()
        try:
            publish(producer, kafka_cfg.upload_topic, factory, args.rate, args.duration, sent)
        finally:
            producer.close(timeout=30)
        load_end = time.time()
        print(f"Published {len(sent)}; waiting up to {args.drain_timeout:.0f} s for the results...",
              file=sys.stderr, flush=True)
        wait_for_results(reader, sent, worker, args.drain_timeout, args.settle)
        counters = worker_counters(metrics_port)
        sampler.stop.set()
        sampler.join(timeout=10)
        exit_code, stop_s = stop_worker(worker, timeout_s=90)
        time.sleep(args.settle)  # a result committed while the worker drained
        reader.stop.set()
        reader.join(timeout=30)
        if reader.error is not None:
            raise RuntimeError(f"reading the results failed: {reader.error!r}")
        figures = analyse(sent, reader.results, sampler.samples, committed_offsets(kafka_cfg),
                          (load_start, load_end), args.rate, args.rss_slope_limit)
        run = {"rate": args.rate, "duration": args.duration, "bad_ratio": args.bad_ratio,
               "partitions": args.partitions, "seed": seed, "bootstrap_servers": bootstrap,
               "worker_args": worker_argv, "worker_pid": worker.pid, "ready_s": ready_s,
               "worker_log": str(workdir / "worker.log"), "worker_counters": counters,
               "worker_exit": exit_code, "stop_s": stop_s}
        print(report(figures, run), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"run": run, "figures": figures}, indent=2))
        clean = (figures["lost"] == 0 and figures["duplicates"] == 0 and figures["unknown_outputs"] == 0
                 and not figures["unexpected_outcomes"] and figures["rss_mib"]["trend"] == "flat"
                 and figures["decoder_rss_mib"]["trend"] == "flat"
                 and exit_code == 0)
        return 0 if clean else 1
    finally:
        if sampler is not None:
            sampler.stop.set()
        if worker is not None and worker.poll() is None:
            stop_worker(worker, timeout_s=30)
        if reader is not None:
            reader.stop.set()
            reader.join(timeout=30)
        if broker is not None:
            broker.stop()
        for path in files.iterdir():
            path.unlink()
        files.rmdir()


if __name__ == "__main__":
    sys.exit(main())
