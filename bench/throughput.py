"""Throughput: the worker's pipeline against a naive DFDC-era loop, in one run, on the same
videos, frames and model.

    .venv/bin/python bench/throughput.py                  # CPU: worker vs baseline, the ratio
    .venv/bin/python bench/throughput.py --scaling        # + 10-min vs 10-s 1080p (latency, RSS)
    .venv/bin/python bench/throughput.py --kafka          # through the real broker (bench/kafka_load.py)
    .venv/bin/python bench/throughput.py --device cuda --ceiling   # GPU: + classifier-only ceiling

The worker side is the pipeline exactly as ``python -m worker run`` builds it
(:func:`worker.app.build_pipeline`: sandboxed decoder child, the model file's MTCNN, the
cross-video classifier batcher when several videos are in flight), driven in-process
without Kafka by ``worker.processing_threads`` threads, as the runner drives it with that
many partitions. The baseline is :mod:`baseline`'s DFDC-era loop (the DFDC winner's
kernel: no overlap at all, every frame between the first and last sampled one decoded, one
MTCNN call a frame), with its batched sequential loop as a second reference. All sides use the
same model file and frames per video; the figures printed are videos/s, frames/s, faces/s
and the ratio, per-video latency percentiles, peak RSS (the decoder child included) and each
stage's share of the time. See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch  # before decord (the pipeline and the baseline import it): see docs/runtime.md, "Pitfalls"

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

TORCH_DEFAULT_THREADS = torch.get_num_threads()  # before any worker side sets its own

import clips  # noqa: E402
from procstats import GpuSampler, RssSampler, children, machine_busy_seconds, percentile  # noqa: E402
from worker.app import build_pipeline  # noqa: E402
from worker.batching import WatchedStage  # noqa: E402
from worker.config import load_config  # noqa: E402
from worker.core.dead_letters import DeadLetter  # noqa: E402
from worker.core.events import parse_upload_event, upload_event  # noqa: E402
from worker.models.checkpoint import save_checkpoint  # noqa: E402
from worker.models.loading import model_frame_slack  # noqa: E402
from worker.models.spec import load_model_spec, write_model_file  # noqa: E402
from worker.testing.samples import NAMES, sample_video  # noqa: E402

try:  # the worker's own driver without Kafka (threads in flight, results in order)
    from worker.runtime.stream import process_stream  # noqa: E402
except ImportError:
    process_stream = None

MODEL_CACHE = clips.DEFAULT_CACHE.parent / "models"
ARCHITECTURE = "efficientnet_b0"


def bench_model_file(frames: int, cache: Path = MODEL_CACHE, architecture: str = ARCHITECTURE) -> Path:
    """A test-made timm model file (random weights: no trained ones exist here; speed does not
    depend on their values), DFDC settings for detection, made once into the cache."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{architecture}-f{frames}.toml"
    weights = cache / f"{architecture}.pt"
    if not weights.is_file():
        torch.manual_seed(0)
        from worker.models.timm_backend import build_model

        save_checkpoint(build_model(architecture), weights, architecture, "bench")
    if not path.is_file():
        from worker.models.checkpoint import sha256_of

        write_model_file(path, name=f"bench-{architecture}", version="bench-random", backend="timm",
                         architecture=architecture, checkpoints=[(weights, sha256_of(weights))],
                         preprocessing={"input_size": 224, "frames_per_video": frames,
                                        "detector_scale": 0.5, "detector_thresholds": [0.7, 0.8, 0.8]},
                         aggregation={"method": "confident_strategy", "threshold": 0.8})
    return path


def input_videos(quick: bool, cache: Path) -> list[Path]:
    samples = [sample_video(n) for n in NAMES]
    specs = [clips.ClipSpec(720, 10)] if quick else list(clips.STANDARD)
    return samples + clips.ensure_clips(specs, cache, log=lambda m: print(m, flush=True))


def worker_config(model_file: Path, device: str, threads: int, roots: list[Path], extra: list[str]):
    return load_config(env={}, overrides=[
        f"model.config={model_file}", f"model.device={device}", f"worker.processing_threads={threads}",
        "media.file_roots=" + ",".join(str(r) for r in roots), "bank.enabled=false", *extra])


def summarise(name: str, wall: float, per_video: list[dict], rss: dict, gpu: dict | None) -> dict:
    """The figures of one pass: rates, latency percentiles, peak RSS, stage shares."""
    latencies = [v["seconds"] for v in per_video]
    stages: dict[str, float] = {}
    for v in per_video:
        for stage, s in v["stages"].items():
            stages[stage] = stages.get(stage, 0.0) + s
    total_stage = sum(stages.values()) or 1.0
    return {"name": name, "videos": len(per_video), "wall_s": wall,
            "videos_per_s": len(per_video) / wall,
            "frames_per_s": sum(v["frames"] for v in per_video) / wall,
            "faces_per_s": sum(v["faces"] for v in per_video) / wall,
            "faces": sum(v["faces"] for v in per_video), "frames": sum(v["frames"] for v in per_video),
            "dead_letters": [f"{v['video']}: {v['dead_letter']}" for v in per_video if v.get("dead_letter")],
            "latency_s": {f"p{q}": percentile(latencies, q) for q in (50, 95, 99)},
            "rss": rss, "gpu": gpu,
            "stage_share": {k: v / total_stage for k, v in sorted(stages.items(), key=lambda kv: -kv[1])}}


class WorkerSide:
    """The worker's pipeline at one ``processing_threads`` setting, built once, warmed up."""

    def __init__(self, cfg, warm_up: Path):
        self.threads = cfg.worker.processing_threads
        before = set(children(os.getpid()))
        self.pipeline = build_pipeline(cfg)
        # what build_pipeline set process-wide for this setting; set again before each pass
        self.torch_threads = torch.get_num_threads()
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="processing")
        list(self.pool.map(self._one, [warm_up] * self.threads))  # decoder children, first calls
        self.child_pids = set(children(os.getpid())) - before  # this side's decoder processes

    @staticmethod
    def _event(path: Path):
        return parse_upload_event(upload_event(path.stem, path.as_uri(), "bench"), 1 << 20)

    def _one(self, path: Path) -> dict:
        started = time.perf_counter()
        try:
            verdict = self.pipeline.process(self._event(path))
        except DeadLetter as failure:  # the worker would dead-letter it and go on: so does the run
            print(f"  dead letter for {path.name}: {failure.reason}: {failure.message}", flush=True)
            return {"video": path.name, "seconds": time.perf_counter() - started, "stages": {},
                    "frames": 0, "faces": 0, "dead_letter": failure.reason}
        stages = {k: v for k, v in verdict.stage_seconds.items() if k != "processing"}
        return {"video": path.name, "seconds": verdict.stage_seconds["processing"], "stages": stages,
                "frames": verdict.frames_sampled, "faces": verdict.face_count}

    def run(self, videos: list[Path]) -> list[dict]:
        torch.set_num_threads(self.torch_threads)  # another side may have set its own since
        if process_stream is None:  # a worker without worker.runtime.stream: the same, by hand
            return list(self.pool.map(self._one, videos))
        out = []
        for result in process_stream(self.pipeline, [self._event(p) for p in videos], self.threads):
            name = Path(result.event.video_uri).name
            if result.verdict is None:
                print(f"  dead letter for {name}: {result.dead_letter.reason}: {result.dead_letter.message}",
                      flush=True)
                out.append({"video": name, "seconds": result.latency_s, "stages": {}, "frames": 0,
                            "faces": 0, "dead_letter": result.dead_letter.reason})
                continue
            verdict = result.verdict
            out.append({"video": name, "seconds": result.latency_s, "frames": verdict.frames_sampled,
                        "faces": verdict.face_count,
                        "stages": {k: v for k, v in verdict.stage_seconds.items() if k != "processing"}})
        return out

    def watch_device_calls(self) -> dict[str, list]:
        """Each cross-video device call's (size, seconds) per stage, where the worker reports
        them (CUDA events on a GPU); empty for a worker that does not."""
        calls: dict[str, list] = {}
        for stage, port in (("detect_faces", self.pipeline.detector), ("classify", self.pipeline.classifier)):
            if isinstance(port, WatchedStage):
                calls[stage] = []
                port.watch(lambda size, seconds, bucket=calls[stage]: bucket.append((size, seconds)))
        return calls

    def close(self) -> None:
        self.pool.shutdown()
        for part in (self.pipeline.classifier, self.pipeline.sampler):
            close = getattr(part, "close", None)
            if close:
                close()


class BaselineSide:
    """A baseline loop in its own process (``bench/baseline.py``), fed the worker's frames.

    In-process, the DFDC-era loop ran ~20 % slower once a worker side had run in the same
    process (fewer cores busy, the same CPU time a video; bench/README.md), which flattered
    the worker. Its own process keeps it clean; it is warmed up before any timing.
    """

    def __init__(self, model_file: Path, spec, device: torch.device, warm_up: Path, videos: list[Path],
                 frame_slack: float, kind: str = "dfdc"):
        from baseline import frame_plan

        count = spec.preprocessing.frames_per_video
        # the worker's frames for each video, worked out before any timing
        self.plans = {path: frame_plan(path, count, frame_slack) for path in {warm_up, *videos}}
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "baseline.py"), "--model-file", str(model_file), "--kind", kind,
             "--device", str(device)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.child_pids = {self.proc.pid}
        self._ask([warm_up])

    def _ask(self, videos: list[Path]) -> list[dict]:
        request = {"videos": [[str(path), self.plans[path]] for path in videos]}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT "):])
        raise RuntimeError(f"the baseline process ended (exit code {self.proc.wait()})")

    def run(self, videos: list[Path]) -> list[dict]:
        return [{"video": path.name, "seconds": r["seconds"], "stages": r["stage_seconds"],
                 "frames": r["frames"], "faces": r["faces"]} for path, r in zip(videos, self._ask(videos))]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def timed_pass(side, videos: list[Path], rss: RssSampler, gpu: GpuSampler | None, device) -> tuple:
    rss.reset(side.child_pids)
    mark = gpu.mark() if gpu else 0
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    calls = side.watch_device_calls() if hasattr(side, "watch_device_calls") else {}
    busy, started = machine_busy_seconds(), time.perf_counter()
    per_video = side.run(videos)
    wall = time.perf_counter() - started
    per_video[0]["cpu_busy_s"] = machine_busy_seconds() - busy
    for stage, bucket in calls.items():
        if bucket:
            per_video[0].setdefault("device_calls", {})[stage] = list(bucket)
    gpu_figures = None
    if device.type == "cuda":
        gpu_figures = gpu.window(mark) if gpu else {}
        gpu_figures = {**(gpu_figures or {}), "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2 ** 30}
    return wall, per_video, rss.peak(), gpu_figures


def merge_passes(name: str, passes: list[tuple]) -> dict:
    wall = sum(p[0] for p in passes)
    per_video = [v for p in passes for v in p[1]]
    rss = {k: max(p[2][k] for p in passes) for k in passes[0][2]}
    gpu = passes[-1][3]
    result = summarise(name, wall, per_video, rss, gpu)
    device: dict[str, dict] = {}
    for v in per_video:
        for stage, bucket in v.pop("device_calls", {}).items():
            d = device.setdefault(stage, {"calls": 0, "items": 0, "seconds": 0.0})
            d["calls"] += len(bucket)
            d["items"] += sum(size for size, _ in bucket)
            d["seconds"] += sum(sec for _, sec in bucket)
    for d in device.values():
        d["mean_batch"] = d["items"] / max(d["calls"], 1)
        d["busy_share_of_wall"] = d["seconds"] / wall
    result["device_calls"] = device
    busy = sum(v.pop("cpu_busy_s", 0.0) for v in per_video)
    result["cpu_cores_busy"] = busy / wall
    result["cpu_s_per_video"] = busy / max(len(per_video), 1)
    return result


def classifier_ceiling(model_file: Path, device: torch.device, batch_sizes: list[int], seconds: float) -> dict:
    """The same model fed pre-cropped uint8 faces through the worker's FaceScorer (host to
    host), at each batch size; the best faces/s is the ceiling."""
    from worker.models.loading import load_detector_model

    spec = load_model_spec(model_file)
    scorer = load_detector_model(spec, device, max(batch_sizes))
    size = spec.preprocessing.input_size
    out = {}
    for batch in batch_sizes:
        scorer.batch_size = batch
        crops = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8).numpy()
        scorer.forward(crops)
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            scorer.forward(crops)
            n += batch
        out[batch] = n / (time.perf_counter() - started)
        print(f"  classifier only, batch {batch:>4}: {out[batch]:9.1f} faces/s", flush=True)
    best = max(out, key=out.get)
    return {"faces_per_s": out, "best_batch": best, "best_faces_per_s": out[best]}


def print_table(results: list[dict], baseline: dict | None) -> None:
    print()
    print(f"{'':<26}{'videos/s':>9}{'frames/s':>10}{'faces/s':>9}{'x base':>8}"
          f"{'p50 s':>8}{'p95 s':>8}{'p99 s':>8}{'RSS MiB':>9}{'child':>7}{'cores':>7}{'CPU s/video':>12}")
    for r in results:
        lat, rss = r["latency_s"], r["rss"]
        print(f"{r['name']:<26}{r['videos_per_s']:>9.3f}{r['frames_per_s']:>10.2f}{r['faces_per_s']:>9.2f}"
              + (f"{r['videos_per_s'] / baseline['videos_per_s']:>7.2f}x" if baseline else f"{'-':>8}")
              + f"{lat['p50']:>8.2f}{lat['p95']:>8.2f}{lat['p99']:>8.2f}{rss['main_mib']:>9.0f}"
              f"{rss['largest_child_mib']:>7.0f}{r['cpu_cores_busy']:>7.2f}{r['cpu_s_per_video']:>12.2f}")
    print("\n(RSS MiB: this process's peak during the pass; it holds every worker side's models at once. "
          "child: the peak of that side's largest child: a worker side's decoder, a baseline's own process. "
          "cores: the machine's busy CPU seconds during the pass over its wall time; CPU s/video: "
          "those seconds per video, the work a video cost, wherever it ran)")
    for r in results:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in r["stage_share"].items())
        print(f"stage share, {r['name']}: {shares}   ({r['videos']} videos, {r['frames']} frames, "
              f"{r['faces']} faces, {r['wall_s']:.1f} s)")
        for stage, d in r.get("device_calls", {}).items():
            print(f"  {stage} device calls, {r['name']}: {d['calls']} calls, mean batch {d['mean_batch']:.1f}, "
                  f"{d['seconds']:.1f} s busy = {d['busy_share_of_wall']:.0%} of the wall time")
        if r["dead_letters"]:
            print(f"  dead letters, {r['name']}: {', '.join(r['dead_letters'])}")
        if r.get("gpu"):
            print(f"  GPU, {r['name']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["gpu"].items()))


def scaling(model_file: Path, device: str, roots: list[Path], extra: list[str], cache: Path,
            repeats: int, rss: RssSampler) -> dict:
    """10-minute 1080p against 10-second 1080p through the worker's pipeline: latency and peak
    RSS of the worker and of its decoder child."""
    short, long = clips.ensure_clips([clips.ClipSpec(1080, 10), clips.LONG], cache,
                                     log=lambda m: print(m, flush=True))
    side = WorkerSide(worker_config(model_file, device, 1, roots, extra), short)
    out = {}
    try:
        for path in (short, long):
            runs = []
            for _ in range(repeats):
                rss.reset(side.child_pids)
                result = side.run([path])[0]
                runs.append((result, rss.peak()))
            ok = [r for r, _ in runs if not r.get("dead_letter")]
            out[path.name] = {
                "bytes": path.stat().st_size, "frames": ok[0]["frames"] if ok else 0,
                "latency_s": statistics.median(r["seconds"] for r in ok) if ok else float("nan"),
                "stages_s": {k: statistics.median(r["stages"][k] for r in ok) for k in ok[0]["stages"]} if ok else {},
                "dead_letters": [r["dead_letter"] for r, _ in runs if r.get("dead_letter")],
                "peak_main_mib": max(p["main_mib"] for _, p in runs),
                "peak_child_mib": max(p["largest_child_mib"] for _, p in runs),
                "child_mib_per_run": [round(p["largest_child_mib"]) for _, p in runs]}
    finally:
        side.close()
    a, b = out[short.name], out[long.name]
    print(f"\nScaling (worker, 1 thread, median of {repeats}):")
    for name, r in out.items():
        stages = ", ".join(f"{k} {v:.2f}" for k, v in r["stages_s"].items())
        print(f"  {name:<28} {r['bytes'] / 2 ** 20:7.1f} MiB  {r['frames']} frames  latency {r['latency_s']:.2f} s"
              f"  peak RSS worker {r['peak_main_mib']:.0f} MiB, decoder child {r['peak_child_mib']:.0f} MiB "
              f"(each run: {r['child_mib_per_run']})  ({stages})"
              + (f"  DEAD LETTERS: {r['dead_letters']}" if r["dead_letters"] else ""))
    print(f"  10-min / 10-s: latency {b['latency_s'] / a['latency_s']:.2f}x, worker RSS "
          f"{b['peak_main_mib'] / a['peak_main_mib']:.2f}x, decoder child RSS "
          f"{b['peak_child_mib'] / max(a['peak_child_mib'], 1):.2f}x (video 60x longer, same sampled frames)")
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (the worker's model.device)")
    p.add_argument("--cpu", action="store_true", help="same as --device cpu")
    p.add_argument("--frames", type=int, default=8, help="frames per video of the generated model file")
    p.add_argument("--model-file", type=Path, help="an operator's model file instead of the generated one")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4],
                   help="worker.processing_threads settings to measure (videos in flight)")
    p.add_argument("--rounds", type=int, default=1, help="passes over the videos per side (interleaved)")
    p.add_argument("--warmup-passes", type=int, default=1,
                   help="untimed passes of each side over all the videos before the timed rounds")
    p.add_argument("--quick", action="store_true", help="the samples and one 720p clip only")
    p.add_argument("--copies", type=int, default=1,
                   help="each video this many times per pass (enough videos to keep many in flight)")
    p.add_argument("--no-baseline", action="store_true", help="the worker only (e.g. under a profiler)")
    p.add_argument("--no-batched-loop", action="store_true",
                   help="leave out the second reference (a sequential loop with sparse decord reads and "
                        "one MTCNN call a video)")
    p.add_argument("--scaling", action="store_true", help="also 10-min vs 10-s 1080p latency and RSS")
    p.add_argument("--scaling-repeats", type=int, default=3)
    p.add_argument("--scaling-only", action="store_true", help="only the --scaling figures")
    p.add_argument("--ceiling", action="store_true",
                   help="also the classifier-only ceiling and end-to-end videos/s as a share of it")
    p.add_argument("--ceiling-batches", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    p.add_argument("--ceiling-seconds", type=float, default=5.0)
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="a worker config override for the worker side, e.g. model.batch_size=128")
    p.add_argument("--kafka", action="store_true", help="drive `python -m worker run` through the "
                   "local broker instead (the options of bench/kafka_load.py follow)")
    p.add_argument("--cache", type=Path, default=clips.DEFAULT_CACHE, help="where the generated clips live")
    p.add_argument("--model-cache", type=Path, default=MODEL_CACHE, help="where the generated model file lives")
    p.add_argument("--json", type=Path, help="also write every figure here")
    return p.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(argv)
    model_file = (args.model_file or bench_model_file(args.frames, args.model_cache)).resolve()
    if args.kafka:
        import kafka_load

        return kafka_load.main(model_file, args.cache, rest + (["--json", str(args.json)] if args.json else []))
    if rest:
        print(f"unknown arguments: {rest}", file=sys.stderr)
        return 2
    if args.scaling_only:
        rss = RssSampler()
        rss.start()
        roots = [sample_video(NAMES[0]).parent, args.cache]
        scaled = scaling(model_file, "cpu" if args.cpu else args.device, roots, args.overrides, args.cache,
                         args.scaling_repeats, rss)
        if args.json:
            args.json.write_text(json.dumps({"scaling": scaled}, indent=2, default=str))
        return 0
    device_name = "cpu" if args.cpu else args.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    spec = load_model_spec(model_file)
    videos = input_videos(args.quick, args.cache)
    roots = sorted({v.parent for v in videos})
    videos = videos * args.copies
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "cpus": os.cpu_count(), "load_average": os.getloadavg(), "model_file": str(model_file),
                    "model": f"{spec.backend} {spec.architecture} @{spec.preprocessing.input_size}",
                    "frames_per_video": spec.preprocessing.frames_per_video,
                    "videos": [v.name for v in videos], "rounds": args.rounds, "copies": args.copies}
    print(f"device {report['device']}, torch {torch.__version__} ({report['torch_threads']} threads), "
          f"{report['cpus']} CPUs, load average {report['load_average'][0]:.2f}")
    print(f"model {report['model']} ({model_file}), {report['frames_per_video']} frames per video")
    print(f"videos ({len(videos)}): {', '.join(report['videos'])}", flush=True)

    rss = RssSampler()
    rss.start()
    gpu = GpuSampler() if device.type == "cuda" else None
    if gpu:
        gpu.start()
    warm = sample_video("carphone_pristine.mp4")
    sides: list[tuple[str, object]] = []
    started = time.perf_counter()
    # the worker's frames (media.frame_slack, unless the model's backend fixes them) for the baselines too
    configured = worker_config(model_file, device_name, 1, roots, args.overrides).media.frame_slack
    slack = model_frame_slack(spec, configured)
    report["frame_slack"] = slack
    print(f"media.frame_slack {slack}: both sides get "
          + ("the winner's even frames" if not slack else "the even frames moved to keyframes within reach"))
    if not args.no_baseline:
        sides.append(("baseline (DFDC-era loop)",
                      BaselineSide(model_file, spec, device, warm, videos, slack, "dfdc")))
        if not args.no_batched_loop:
            sides.append(("batched sequential loop",
                          BaselineSide(model_file, spec, device, warm, videos, slack, "batched")))
    workers = []
    for threads in args.threads:
        side = WorkerSide(worker_config(model_file, device_name, threads, roots, args.overrides), warm)
        workers.append(side)
        sides.append((f"worker, {threads} in flight", side))
        report.setdefault("worker_torch_threads", {})[threads] = side.torch_threads
    print(f"models loaded and warmed up in {time.perf_counter() - started:.1f} s; torch threads: baseline "
          f"{TORCH_DEFAULT_THREADS}, worker " + ", ".join(
              f"{side.torch_threads} at {side.threads} in flight" for side in workers), flush=True)

    # Steady state, as a long-running worker sees it: the first pass over new inputs pays for
    # oneDNN's kernels for each new shape and for growing the heap (the worker's first pass
    # ran at 60-75 % of the speed of the next ones; the baselines' barely moved).
    for _ in range(args.warmup_passes):
        warmed = time.perf_counter()
        for name, side in sides:
            side.run(videos)
        print(f"untimed warm-up pass of every side: {time.perf_counter() - warmed:.1f} s", flush=True)
    report["warmup_passes"] = args.warmup_passes
    allocator = os.environ.get("GLIBC_TUNABLES", "")
    report["glibc_tunables"] = allocator
    print(f"GLIBC_TUNABLES={allocator or '(unset)'} (all sides)", flush=True)

    passes: dict[str, list] = {name: [] for name, _ in sides}
    try:
        for round_ in range(args.rounds):
            for name, side in sides:
                result = timed_pass(side, videos, rss, gpu, device)
                passes[name].append(result)
                print(f"  round {round_ + 1}, {name}: {len(videos) / result[0]:.3f} videos/s "
                      f"({result[0]:.1f} s)", flush=True)
        results = [merge_passes(name, p) for name, p in passes.items()]
        report["results"] = results
        baseline = results[0] if not args.no_baseline else None
        print_table(results, baseline)
        worker_results = [r for r in results if r["name"].startswith("worker")]
        best = max(worker_results, key=lambda r: r["videos_per_s"])
        if not args.no_baseline:
            report["ratio_best_worker_over_baseline"] = best["videos_per_s"] / baseline["videos_per_s"]
            print(f"\nbest worker setting ({best['name']}) / baseline: "
                  f"{report['ratio_best_worker_over_baseline']:.2f}x videos/s "
                  f"(faces: baseline {baseline['faces']}, worker {best['faces']})")
            batched = next((r for r in results if r["name"].startswith("batched")), None)
            if batched:
                report["ratio_best_worker_over_batched_loop"] = best["videos_per_s"] / batched["videos_per_s"]
                report["ratio_batched_loop_over_baseline"] = batched["videos_per_s"] / baseline["videos_per_s"]
                print(f"best worker setting / batched sequential loop: "
                      f"{report['ratio_best_worker_over_batched_loop']:.2f}x videos/s; batched sequential "
                      f"loop / baseline: {report['ratio_batched_loop_over_baseline']:.2f}x")
        report["load_average_after"] = os.getloadavg()
        torch.set_num_threads(TORCH_DEFAULT_THREADS)  # the ceiling and scaling: torch's default
        for _, side in sides:
            side.close()
        if args.ceiling:
            print("\nClassifier-only ceiling (same model, pre-cropped faces, host to host):", flush=True)
            ceiling = classifier_ceiling(model_file, device, args.ceiling_batches, args.ceiling_seconds)
            faces_per_video = best["faces"] / best["videos"]
            ceiling["videos_per_s"] = ceiling["best_faces_per_s"] / max(faces_per_video, 1e-9)
            ceiling["end_to_end_share"] = best["videos_per_s"] / ceiling["videos_per_s"]
            report["ceiling"] = ceiling
            print(f"ceiling: {ceiling['best_faces_per_s']:.1f} faces/s at batch {ceiling['best_batch']} = "
                  f"{ceiling['videos_per_s']:.2f} videos/s at {faces_per_video:.1f} faces per video; "
                  f"end to end ({best['name']}) {best['videos_per_s']:.2f} videos/s = "
                  f"{ceiling['end_to_end_share']:.0%} of the ceiling")
        if args.scaling:
            report["scaling"] = scaling(model_file, device_name, roots, args.overrides, args.cache,
                                        args.scaling_repeats, rss)
    finally:
        rss.stop()
        if gpu:
            gpu.stop()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    # the allocator settings `python -m worker run` starts with (worker/runtime/allocator.py), for the
    # worker sides in this process; the baselines' own processes inherit them too
    from worker.runtime.allocator import reexec_with_tuned_allocator

    reexec_with_tuned_allocator()
    sys.exit(main())
