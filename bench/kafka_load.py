"""Throughput through the real broker: the full worker (`python -m worker run`) at fixed
offered rates, and one against two worker processes in one consumer group.

Reached through ``bench/throughput.py --kafka`` (which makes the model file and the clips).
It starts a local Apache Kafka broker (:mod:`worker.testing.local_kafka`), creates fresh topics, and
starts the worker as a child process configured through ``MODERATION_*`` variables, as
bench/soak.py does (whose helpers it uses). Then:

- **Offered load.** For each rate in ``--rates``, upload events are published open-loop
  (event *i* due at *i* / rate s) for ``--duration`` s, cycling over the same videos, and the
  run waits for their verdicts. Per rate: throughput, end-to-end latency p50/p95/p99 (result
  read − upload time) and the worker's peak RSS with its decoder child. Below saturation
  latency stays flat; the saturation point is the first rate where throughput falls under
  90 % of the offered rate or p50 latency doubles over the lowest rate's.
- **Scale-out.** ``--burst`` events published at once to a 2-partition topic, with one and
  then two worker processes in the same group: throughput = events / (last result − publish).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

import clips  # noqa: E402
import soak  # noqa: E402
from procstats import RssSampler, percentile  # noqa: E402
from worker.config import load_config  # noqa: E402
from worker.core.events import upload_event  # noqa: E402
from worker.runtime.clients import build_producer, ensure_topics  # noqa: E402
from worker.testing.local_kafka import LocalKafka  # noqa: E402
from worker.testing.samples import sample_video  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(prog="throughput.py --kafka")
    p.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.2, 0.4, 0.8],
                   help="offered upload events per second, one level each")
    p.add_argument("--duration", type=float, default=45.0, help="seconds of load per level")
    p.add_argument("--drain-timeout", type=float, default=120.0)
    p.add_argument("--worker-threads", type=int, default=2, help="worker.processing_threads")
    p.add_argument("--partitions", type=int, default=2)
    p.add_argument("--burst", type=int, default=12, help="events for the one-vs-two-workers run (0: skip)")
    p.add_argument("--skip-levels", action="store_true", help="only the one-vs-two-workers run")
    p.add_argument("--worker-args", default="", help="more `python -m worker run` flags")
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


class Run:
    """One set of topics and a consumer group on the broker, with its results reader."""

    def __init__(self, bootstrap: str, partitions: int, label: str):
        run_id = f"{label}-{os.urandom(3).hex()}"
        self.kafka_cfg = load_config(env={}, overrides=[
            f"kafka.bootstrap_servers={bootstrap}", f"kafka.group_id=tp-{run_id}",
            f"kafka.upload_topic=tp-uploads-{run_id}", f"kafka.verdict_topic=tp-verdicts-{run_id}",
            f"kafka.dead_letter_topic=tp-dead-letters-{run_id}"]).kafka
        self.bank_topic = f"tp-bank-{run_id}"
        ensure_topics(self.kafka_cfg, partitions=partitions, bank_topic=self.bank_topic)
        self.reader = soak.ResultsReader(self.kafka_cfg, max_s=24 * 3600)
        self.reader.start()
        self.producer = build_producer(self.kafka_cfg)
        self.workers = []
        self.run_id = run_id

    def start_worker(self, argv: list[str], logdir: Path) -> tuple:
        port = soak.free_port()
        wid = f"tp-{self.run_id}-{len(self.workers)}"
        proc = soak.start_worker(self.kafka_cfg, wid, port,
                                 argv + ["--set", f"bank.topic={self.bank_topic}"], logdir / f"{wid}.log")
        self.workers.append((proc, port))
        return proc, port

    def publish(self, videos: list[Path], count: int, rate: float | None, tag: str) -> dict[str, float]:
        """``count`` events (open loop at ``rate``/s, or all at once); event id -> upload time."""
        sent, start = {}, time.monotonic()
        for i in range(count):
            if rate:
                time.sleep(max(0.0, start + i / rate - time.monotonic()))
            video = videos[i % len(videos)]
            event_id = f"{tag}-{i:05d}"
            now = datetime.now(timezone.utc)
            self.producer.send(self.kafka_cfg.upload_topic, key=event_id.encode(),
                               value=upload_event(event_id, video.as_uri(), "bench", event_id=event_id,
                                                  uploaded_at=now))
            sent[event_id] = now.timestamp()
        self.producer.flush(timeout=60)
        return sent

    def wait(self, sent: dict[str, float], timeout_s: float) -> list:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = [r for r in self.reader.results if r.source_event_id in sent]
            if len({r.source_event_id for r in got}) >= len(sent):
                return got
            if any(p.poll() is not None for p, _ in self.workers):
                raise RuntimeError("a worker exited during the run")
            time.sleep(0.2)
        return [r for r in self.reader.results if r.source_event_id in sent]

    def close(self) -> None:
        for proc, _ in self.workers:
            soak.stop_worker(proc, timeout_s=60)
        self.producer.close(timeout=10)
        self.reader.stop.set()
        self.reader.join(timeout=30)


def level_figures(rate: float, sent: dict[str, float], results: list, started: float, rss: dict) -> dict:
    latencies = [r.read_at - sent[r.source_event_id] for r in results]
    outcomes = {}
    for r in results:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    last = max((r.read_at for r in results), default=started)
    return {"offered_per_s": rate, "events": len(sent), "results": len(results),
            "throughput_per_s": len(results) / max(last - started, 1e-9),
            "latency_s": {f"p{q}": percentile(latencies, q) for q in (50, 95, 99)},
            "outcomes": outcomes, "peak_rss_mib": rss}


def saturation(levels: list[dict]) -> str:
    base = levels[0]["latency_s"]["p50"]
    ok = None
    for level in levels:
        keeps_up = level["throughput_per_s"] >= 0.9 * level["offered_per_s"] and level["results"] == level["events"]
        if keeps_up and level["latency_s"]["p50"] <= 2 * base:
            ok = level["offered_per_s"]
            continue
        below = f"{ok:g}" if ok is not None else "none of the rates"
        return (f"saturated at {level['offered_per_s']:g}/s (throughput {level['throughput_per_s']:.2f}/s); "
                f"flat up to {below}")
    return f"not saturated up to {levels[-1]['offered_per_s']:g}/s"


def offered_load(bootstrap: str, args, worker_argv: list[str], videos: list[Path], logdir: Path) -> dict:
    run = Run(bootstrap, args.partitions, "levels")
    try:
        proc, port = run.start_worker(worker_argv, logdir)
        print(f"worker pid {proc.pid} loading (log in {logdir})...", flush=True)
        ready = soak.wait_ready(proc, port, 300)
        print(f"ready after {ready:.1f} s", flush=True)
        # one untimed event first: the decoder child and MTCNN's first calls
        run.wait(run.publish(videos[:1], 1, None, "warm"), args.drain_timeout)
        rss = RssSampler(proc.pid, interval_s=0.2)
        rss.start()
        levels = []
        for rate in args.rates:
            rss.reset()
            count = max(1, round(rate * args.duration))
            started = time.time()
            sent = run.publish(videos, count, rate, f"r{rate:g}")
            results = run.wait(sent, args.drain_timeout)
            level = level_figures(rate, sent, results, started, rss.peak())
            levels.append(level)
            lat = level["latency_s"]
            print(f"  offered {rate:5.2f}/s: {level['results']}/{level['events']} results, throughput "
                  f"{level['throughput_per_s']:.3f}/s, latency p50 {lat['p50']:.2f} s p95 {lat['p95']:.2f} s "
                  f"p99 {lat['p99']:.2f} s, peak RSS worker {level['peak_rss_mib']['main_mib']:.0f} MiB + decoder "
                  f"{level['peak_rss_mib']['largest_child_mib']:.0f} MiB; {level['outcomes']}", flush=True)
        rss.stop()
        verdict = saturation(levels)
        print(f"  {verdict}", flush=True)
        return {"levels": levels, "saturation": verdict, "counters": soak.worker_counters(port)}
    finally:
        run.close()


def scale_out(bootstrap: str, args, worker_argv: list[str], videos: list[Path], logdir: Path) -> dict:
    out = {}
    for count in (1, 2):
        run = Run(bootstrap, 2, f"x{count}")
        try:
            started = [run.start_worker(worker_argv, logdir) for _ in range(count)]
            for proc, port in started:
                soak.wait_ready(proc, port, 300)
            run.wait(run.publish(videos[:1], 1, None, "warm"), args.drain_timeout)
            if count == 2:  # both members must own a partition: warm the other one too
                run.wait(run.publish(videos[:1], 2, None, "warm2"), args.drain_timeout)
            t0 = time.time()
            sent = run.publish(videos, args.burst, None, "burst")
            results = run.wait(sent, args.drain_timeout * 3)
            last = max((r.read_at for r in results), default=t0)
            out[count] = {"events": len(sent), "results": len(results), "seconds": last - t0,
                          "throughput_per_s": len(results) / max(last - t0, 1e-9)}
            print(f"  {count} worker process(es), 2 partitions: {len(results)}/{len(sent)} in "
                  f"{last - t0:.1f} s = {out[count]['throughput_per_s']:.3f} videos/s", flush=True)
        finally:
            run.close()
    out["ratio_two_over_one"] = out[2]["throughput_per_s"] / out[1]["throughput_per_s"]
    print(f"  two workers / one: {out['ratio_two_over_one']:.2f}x", flush=True)
    return out


def main(model_file: Path, cache: Path, argv: list[str]) -> int:
    args = parse_args(argv)
    import shlex

    clip = clips.ensure_clips([clips.ClipSpec(720, 10)], cache)[0]
    videos = [sample_video("carphone_pristine.mp4"), sample_video("bikes.mp4"), clip]
    roots = sorted({str(v.parent) for v in videos})
    worker_argv = ["--set", f"model.config={model_file}", "--set", "model.device=cpu",
                   "--set", f"worker.processing_threads={args.worker_threads}",
                   "--set", "media.file_roots=" + ",".join(roots), *shlex.split(args.worker_args)]
    logdir = Path(tempfile.mkdtemp(prefix="throughput-kafka-"))
    report = {"videos": [v.name for v in videos], "worker_argv": worker_argv, "load_average": os.getloadavg()}
    print(f"videos: {', '.join(report['videos'])}; worker: {' '.join(worker_argv)}", flush=True)
    print("starting a local Kafka broker...", flush=True)
    with LocalKafka() as broker:
        if not args.skip_levels:
            print(f"Offered load ({args.partitions} partitions, {args.duration:g} s a level):", flush=True)
            report["offered_load"] = offered_load(broker.bootstrap_servers, args, worker_argv, videos, logdir)
        if args.burst:
            print(f"Scale-out ({args.burst} events at once):", flush=True)
            report["scale_out"] = scale_out(broker.bootstrap_servers, args, worker_argv, videos, logdir)
    report["load_average_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0
