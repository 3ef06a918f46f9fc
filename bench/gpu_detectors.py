"""Detector throughput on one GPU: the DFDC winner's B7 at 380 in bf16, the other backends,
peak GPU memory, and the worker's end-to-end videos per second (no Kafka).

    PYTHONPATH=. python bench/gpu_detectors.py                 # CUDA: the figures of issue 3
    PYTHONPATH=. python bench/gpu_detectors.py --cpu --quick   # a smoke run of the same code

Everything runs through the worker's own code: :class:`worker.models.inference.FaceScorer`
(uint8 crops in pinned memory, non-blocking copies, ``channels_last``, bf16 autocast on
CUDA, ``inference_mode``) loaded from a model file by :func:`load_detector_model`, and
:func:`worker.app.build_pipeline` for the end-to-end figure. The networks have random
weights saved in the published checkpoint layout (no weights can be downloaded; speed does
not depend on their values). Baseline, measured in the same run: the same B7 called the
plain way (fp32, NCHW, no autocast) at the smallest batch size; the ratio is printed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch  # before decord (the pipeline imports it): see docs/runtime.md, "Pitfalls"

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.app import build_pipeline  # noqa: E402
from worker.config import load_config  # noqa: E402
from worker.core.events import parse_upload_event, upload_event  # noqa: E402
from worker.models.checkpoint import save_checkpoint, sha256_of  # noqa: E402
from worker.models.dfdc import DeepFakeClassifier  # noqa: E402
from worker.models.loading import load_detector_model  # noqa: E402
from worker.models.spec import write_model_file  # noqa: E402
from worker.models.timm_backend import build_model  # noqa: E402
from worker.testing.samples import NAMES, sample_dir, sample_video  # noqa: E402

B7 = "tf_efficientnet_b7_ns"
WINNER_PRE = {"input_size": 380, "crop_margin": 1 / 3, "resize": "isotropic",
              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
              "detector_scale": 0.5, "detector_thresholds": [0.7, 0.8, 0.8]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gib(n: int) -> float:
    return n / 2 ** 30


def winner_model_file(folder: Path, frames_per_video: int, members: int = 1) -> Path:
    torch.manual_seed(0)
    checkpoints = []
    for i in range(members):
        model = DeepFakeClassifier(encoder=B7)
        path = folder / f"b7_random_{i}"
        torch.save({"epoch": 0, "bce_best": 0.0,
                    "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
        checkpoints.append((path, sha256_of(path)))
    model_file = folder / f"dfdc-winner-x{members}.toml"
    write_model_file(model_file, name="dfdc-winner-b7-random", version="bench", backend="dfdc_winner",
                     architecture=B7, checkpoints=checkpoints,
                     preprocessing={**WINNER_PRE, "frames_per_video": frames_per_video},
                     aggregation={"method": "confident_strategy", "threshold": 0.8})
    return model_file


def faces_per_second(scorer, batch: int, iterations: int, device: torch.device) -> tuple[float, float]:
    """(faces/s, peak GPU GiB) of scorer.forward on ``batch`` random uint8 crops, host to host."""
    size = scorer.preprocessing.input_size
    crops = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8).numpy()
    scorer.forward(crops)  # this batch size's first call (allocator, kernel choice)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(iterations):
        scorer.forward(crops)
    sync(device)
    seconds = time.perf_counter() - started
    peak = gib(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else float("nan")
    return batch * iterations / seconds, peak


def baseline_faces_per_second(network: torch.nn.Module, batch: int, iterations: int,
                              device: torch.device) -> float:
    """The plain way: fp32 NCHW tensor already on the device, no autocast, no channels_last."""
    network = network.to(device).eval().to(memory_format=torch.contiguous_format)
    x = torch.randn(batch, 3, 380, 380, device=device)
    with torch.inference_mode():
        network(x)
        sync(device)
        started = time.perf_counter()
        for _ in range(iterations):
            torch.sigmoid(network(x)).cpu()
        sync(device)
    return batch * iterations / (time.perf_counter() - started)


def other_backends(folder: Path, device: torch.device, batch: int, iterations: int) -> dict[str, float]:
    """faces/s of the generic backends (timm state dict; TorchScript) at one batch size."""
    out = {}
    torch.manual_seed(0)
    b0 = build_model("efficientnet_b0")
    path = folder / "b0.pt"
    sha = save_checkpoint(b0, path, "efficientnet_b0", "bench")
    spec = write_model_file(folder / "b0.toml", name="b0", version="bench", backend="timm",
                            architecture="efficientnet_b0", checkpoints=[(path, sha)],
                            preprocessing={"input_size": 224}, aggregation={"method": "mean"})
    out["timm efficientnet_b0 @224"] = faces_per_second(load_detector_model(spec, device, batch),
                                                        batch, iterations, device)[0]
    scripted = folder / "b0.ts"
    torch.jit.trace(b0.eval(), torch.randn(1, 3, 224, 224)).save(str(scripted))
    spec = write_model_file(folder / "b0-ts.toml", name="b0-ts", version="bench", backend="torchscript",
                            architecture="", checkpoints=[(scripted, sha256_of(scripted))],
                            preprocessing={"input_size": 224}, aggregation={"method": "mean"})
    out["torchscript efficientnet_b0 @224"] = faces_per_second(load_detector_model(spec, device, batch),
                                                               batch, iterations, device)[0]
    return out


def end_to_end(model_file: Path, device: torch.device, threads: int, rounds: int, names) -> dict:
    """Videos/s of build_pipeline's pipeline (sandboxed decode, the winner's MTCNN, B7) on the
    sample videos, ``threads`` videos in flight (their faces share device batches)."""
    cfg = load_config(env={}, overrides=[
        f"model.config={model_file}", f"model.device={device}", "model.batch_size=128",
        f"worker.processing_threads={threads}", f"media.file_roots={sample_dir()}", "bank.enabled=false"])
    pipeline = build_pipeline(cfg)
    events = [parse_upload_event(upload_event(n, sample_video(n).as_uri(), "bench"), 1 << 20) for n in names]
    pipeline.process(events[0])  # decoder child, MTCNN first call
    work = events * rounds
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        verdicts = list(pool.map(pipeline.process, work))
    seconds = time.perf_counter() - started
    stages: dict[str, list[float]] = {}
    for v in verdicts:
        for stage, s in v.stage_seconds.items():
            stages.setdefault(stage, []).append(s)
    close = getattr(pipeline.classifier, "close", None)
    if close:
        close()
    return {"videos": len(work), "seconds": seconds, "videos_per_s": len(work) / seconds,
            "faces": sum(v.face_count for v in verdicts),
            "median_stage_s": {k: statistics.median(v) for k, v in stages.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (fp32) instead of CUDA")
    parser.add_argument("--quick", action="store_true", help="tiny batches and one short round: a smoke run")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--iterations", type=int, default=None, help="timed batches per batch size")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="videos in flight for the end-to-end figure")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu (add --quick for a smoke run)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    batch_sizes = args.batch_sizes or ([2] if args.quick else [32, 128, 512])
    iterations = args.iterations or (1 if args.quick else 10)
    threads = args.threads or ([1, 2] if args.quick else [1, 4])
    names = ["carphone_pristine.mp4"] if args.quick else list(NAMES)
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "precision": "bf16 autocast" if device.type == "cuda" else "fp32"}
    print(f"device: {report['device']}  torch {torch.__version__}  ({report['precision']})", flush=True)

    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        folder = Path(tmp)
        model_file = winner_model_file(folder, frames_per_video=4 if args.quick else 32)
        from worker.models.spec import load_model_spec

        spec = load_model_spec(model_file)
        started = time.perf_counter()
        scorer = load_detector_model(spec, device, batch_size=max(batch_sizes))
        report["load_and_warm_up_s"] = time.perf_counter() - started
        print(f"B7 loaded and warmed up in {report['load_and_warm_up_s']:.1f} s", flush=True)

        report["b7_380"] = {}
        for batch in batch_sizes:
            rate, peak = faces_per_second(scorer, batch, iterations, device)
            report["b7_380"][batch] = {"faces_per_s": rate, "peak_gpu_gib": peak}
            memory = f"peak GPU memory {peak:6.2f} GiB" if device.type == "cuda" else "(no GPU memory on the CPU)"
            print(f"B7 @380 batch {batch:>4}: {rate:9.1f} faces/s   {memory}", flush=True)

        baseline = baseline_faces_per_second(scorer.members[0], batch_sizes[0], iterations, device)
        best = max(v["faces_per_s"] for v in report["b7_380"].values())
        report["baseline_fp32_nchw"] = {"batch": batch_sizes[0], "faces_per_s": baseline,
                                        "best_over_baseline": best / baseline}
        print(f"baseline (fp32, NCHW, no autocast, batch {batch_sizes[0]}): {baseline:.1f} faces/s; "
              f"best worker path / baseline = {best / baseline:.2f}x", flush=True)
        del scorer
        if device.type == "cuda":
            torch.cuda.empty_cache()

        report["other_backends"] = other_backends(folder, device, batch_sizes[min(1, len(batch_sizes) - 1)],
                                                  iterations)
        for name, rate in report["other_backends"].items():
            print(f"{name}: {rate:.1f} faces/s", flush=True)

        report["end_to_end"] = {}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for n in threads:
            result = end_to_end(model_file, device, n, n if args.quick else 3, names)
            report["end_to_end"][n] = result
            stages = ", ".join(f"{k} {v:.3f}" for k, v in result["median_stage_s"].items())
            print(f"end to end, {n} video(s) in flight: {result['videos_per_s']:.2f} videos/s "
                  f"({result['videos']} videos, {result['faces']} faces, {result['seconds']:.1f} s; "
                  f"median s per stage: {stages})", flush=True)
        if device.type == "cuda":
            report["end_to_end_peak_gpu_gib"] = gib(torch.cuda.max_memory_allocated(device))
            print(f"peak GPU memory during the end-to-end runs: {report['end_to_end_peak_gpu_gib']:.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
