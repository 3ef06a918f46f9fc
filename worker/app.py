"""Wiring: builds the real adapters from the config and runs the worker.

This is the only module that knows which concrete fetcher, decoder, face detector,
classifier and Kafka clients the pipeline gets.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

import torch  # before decord (imported by .media): see docs/runtime.md, "Pitfalls"
from prometheus_client import CollectorRegistry

from worker.bank.attach import attach_bank
from worker.bank.confirmations import VideoFingerprinter
from worker.batching import WatchedStage
from worker.config import BankConfig, Config, ConfigError, FacesConfig, MediaConfig, ModelConfig, ProvenanceConfig
from worker.core.pipeline import FaceClassifier, FaceDetector, FrameSampler, Pipeline
from worker.core.policy import Policy
from worker.faces.batching import CrossVideoDetector
from worker.faces.mtcnn import MtcnnDetector
from worker.media.fetch import Fetcher
from worker.media.limits import DecodeLimits
from worker.media.sandbox import SandboxedSampler
from worker.metrics import Health, HealthServer, WorkerMetrics
from worker.models.batching import CrossVideoBatcher
from worker.models.loading import load_detector_model, load_face_detector, model_frame_slack
from worker.models.spec import ModelSpec, load_model_spec
from worker.models.timing import StageTimer
from worker.orders.handler import OpenOrders, OrderHandler
from worker.orders.records import parse_category_hours
from worker.provenance.sandbox import CredentialReader, ReaderSettings, TrustAnchorsError
from worker.runtime.access import check_access
from worker.runtime.accounting import Latencies
from worker.runtime.clients import build_bank_consumer, build_consumer, build_delivery
from worker.runtime.clocks import LatencyWindow
from worker.runtime.outputs import Outputs
from worker.runtime.runner import Runner
from worker.runtime.watchdog import DeviceCalls, timed

log = logging.getLogger("worker.app")


class DeviceError(ConfigError):
    """``model.device`` names a GPU this machine cannot use: a start-up error, not a slow CPU run."""


def cuda_unusable(cuda=torch.cuda, built_for: str | None = torch.version.cuda) -> str | None:
    """Why no GPU can be used here, or None when one can."""
    if built_for is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    if not cuda.is_available():
        return (f"torch {torch.__version__}, built for CUDA {built_for}, finds no usable GPU (none "
                "visible to the process, e.g. no device plugin or CUDA_VISIBLE_DEVICES, or a driver "
                f"older than CUDA {built_for} needs)")
    return None


def select_device(name: str, cuda=torch.cuda, built_for: str | None = torch.version.cuda) -> torch.device:
    """``cpu``; ``auto``: the GPU when one is usable, else the CPU; ``cuda``/``cuda:N``: that
    GPU, or :class:`DeviceError` when it cannot be used (never a silent CPU run)."""
    if name == "cpu":
        return torch.device("cpu")
    why = cuda_unusable(cuda, built_for)
    if name == "auto":
        return torch.device("cpu" if why else "cuda")
    device = torch.device(name)
    if why:
        raise DeviceError(f"model.device = {name!r}, but {why}; set model.device = \"cpu\" to run without one")
    if (device.index or 0) >= cuda.device_count():
        raise DeviceError(f"model.device = {name!r}, but this process sees {cuda.device_count()} GPU(s)")
    return device


def start_device(cfg: ModelConfig, metrics: WorkerMetrics, cuda=torch.cuda,
                 built_for: str | None = torch.version.cuda) -> torch.device:
    """The worker's device, checked before anything else starts; an ``auto`` that found no
    GPU is logged with the reason and exported (``moderation_device_fallback``)."""
    device = select_device(cfg.device, cuda, built_for)
    fallback = cfg.device == "auto" and device.type == "cpu"
    if fallback:
        log.warning("model.device = auto runs on the CPU: %s", cuda_unusable(cuda, built_for))
    metrics.device_fallback.set(1 if fallback else 0)
    return device


def load_model_file(cfg: ModelConfig) -> ModelSpec | None:
    """The model file named by ``model.config``, validated; None when none is configured."""
    if not cfg.config:
        log.warning("no model file configured (model.config): faces go to review, never to takedown")
        return None
    return load_model_spec(cfg.config)


def build_classifier(spec: ModelSpec | None, cfg: ModelConfig, device: torch.device,
                     processing_threads: int = 1) -> FaceClassifier | None:
    """The model, loaded once and warmed up; with several videos in flight, their faces
    share device batches (flushed at ``model.batch_size`` or after ``model.max_wait_ms``)."""
    if spec is None:
        return None
    scorer = load_detector_model(spec, device, cfg.batch_size, cfg.precision)
    if spec.calibration is None:
        log.warning("model %s has no [calibration]: it will recommend review at most", spec.name)
    if processing_threads > 1:
        return CrossVideoBatcher(scorer, max_wait_s=cfg.max_wait_ms / 1000.0,
                                 max_queued=processing_threads, timer=StageTimer(device).measure)
    return scorer


def build_detector(spec: ModelSpec | None, faces: FacesConfig, device: torch.device,
                   processing_threads: int = 1) -> FaceDetector:
    """The face detector the model file asks for (:func:`load_face_detector`), else MTCNN
    as [faces] says. With several videos in flight on a GPU (``faces.batch_across_videos``),
    MTCNN's calls take frames of several videos (``faces.max_batch`` / ``faces.max_wait_ms``);
    on a CPU each video's thread calls it itself. The DFDC winner's detector runs one frame
    at a time by its rules, so it is left alone."""
    if spec is None:
        detector = MtcnnDetector(device, max_side=faces.max_side, min_face_size=faces.min_face_size,
                                 min_confidence=faces.min_confidence,
                                 batch_size=max(faces.batch_size, faces.max_batch)
                                 if processing_threads > 1 else faces.batch_size)
    else:
        # the model file's own detector keeps faces.batch_size: its boxes may depend on it
        detector = load_face_detector(spec, device, faces.min_face_size, faces.batch_size)
    shared = faces.batch_across_videos == "on" or (faces.batch_across_videos == "auto"
                                                    and device.type == "cuda")
    if processing_threads > 1 and shared and isinstance(detector, MtcnnDetector):
        return CrossVideoDetector(detector, faces.max_batch, faces.max_wait_ms / 1000.0,
                                  max_queued=processing_threads, timer=StageTimer(device).measure)
    return detector


def _gpu_memory() -> tuple[int, int]:
    free, total = torch.cuda.mem_get_info()
    return total - free, total


def _gpu_utilisation() -> float | None:
    try:
        return torch.cuda.utilization() / 100.0  # needs NVML (pynvml); absent: not exported as busy
    except Exception:
        return None


def decode_limits(media: MediaConfig, bank: BankConfig, entries: bool = False,
                  frame_slack: float | None = None) -> DecodeLimits:
    """The decoder's limits; with the bank on, about ``bank.hash_rate_hz`` small hash frames
    a second too (``entries``: ``bank.entry_hash_rate_hz``, for fingerprinting bank entries).
    ``frame_slack`` overrides ``media.frame_slack`` (a model file's backend may fix it)."""
    hash_rate_hz, hash_max_frames = bank.hash_rate_hz, bank.max_hash_frames
    if entries:
        hash_rate_hz, hash_max_frames = bank.entry_hash_rate_hz, bank.entry_max_hash_frames
    return DecodeLimits(threads=media.decode_threads, max_pixels=media.max_pixels,
                        max_duration_s=media.max_duration_s,
                        hash_rate_hz=hash_rate_hz if bank.enabled else 0.0,
                        hash_max_frames=hash_max_frames, hash_min_frames=bank.min_hash_frames,
                        frame_slack=media.frame_slack if frame_slack is None else frame_slack)


def build_sampler(media: MediaConfig, limits: DecodeLimits) -> FrameSampler:
    """Decoding in the sandboxed child process, or (``media.sandbox = false``) in-process."""
    if media.sandbox:
        return SandboxedSampler(media.decode_timeout_s, media.decoder_memory_bytes, limits)
    from worker.media.decoding import DecordSampler

    return DecordSampler(limits)


def build_fetcher(media: MediaConfig) -> Fetcher:
    return Fetcher(media.max_video_bytes, media.fetch_timeout_s, file_roots=media.file_roots,
                   schemes=media.uri_schemes, allowed_networks=media.allowed_networks,
                   max_redirects=media.max_redirects, connect_timeout_s=media.connect_timeout_s)


_TORCH_DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice: one per physical core


def torch_threads(cfg: Config, device: torch.device, default: int = _TORCH_DEFAULT_THREADS) -> int:
    """``worker.torch_threads``, or with 0: on a CPU device with several videos in flight, the
    cores shared among them, since the videos already keep the cores busy and more torch
    threads than cores only cost CPU (figures in docs/benchmarks.md); otherwise torch's
    default."""
    if cfg.worker.torch_threads:
        return cfg.worker.torch_threads
    if device.type == "cpu" and cfg.worker.processing_threads > 1:
        return max(1, default // cfg.worker.processing_threads)
    return default


def build_pipeline(cfg: Config) -> Pipeline:
    device = select_device(cfg.model.device)
    torch.set_num_threads(torch_threads(cfg, device))  # process-wide
    spec = load_model_file(cfg.model)
    log.info("loading models on %s", device)
    return Pipeline(
        fetcher=build_fetcher(cfg.media),
        sampler=build_sampler(cfg.media, decode_limits(
            cfg.media, cfg.bank, frame_slack=model_frame_slack(spec, cfg.media.frame_slack))),
        detector=build_detector(spec, cfg.faces, device, cfg.worker.processing_threads),
        classifier=build_classifier(spec, cfg.model, device, cfg.worker.processing_threads),
        policy=Policy(cfg.policy.takedown_threshold, cfg.policy.review_threshold),
        frames_per_video=spec.preprocessing.frames_per_video if spec else cfg.media.frames_per_video,
        credentials=build_credentials_reader(cfg.provenance),
    )


def build_credentials_reader(provenance: ProvenanceConfig) -> CredentialReader | None:
    """The sandboxed C2PA reader (docs/provenance.md), or None with ``provenance.enabled`` off;
    a trust-anchor bundle that cannot be used stops start-up here."""
    if not provenance.enabled:
        return None
    try:
        return CredentialReader(ReaderSettings.from_config(provenance))
    except TrustAnchorsError as exc:
        raise ConfigError(str(exc)) from None


def observe_device_stages(pipeline: Pipeline, metrics: WorkerMetrics) -> None:
    """Each cross-video device call's time (CUDA events on a GPU) and size, as the stages
    ``detect_faces_device`` and ``classify_device``."""
    for stage, port in (("detect_faces", pipeline.detector), ("classify", pipeline.classifier)):
        if isinstance(port, WatchedStage):
            def observe(size: int, seconds: float, stage: str = stage) -> None:
                metrics.stage.labels(f"{stage}_device").observe(seconds)
                metrics.batch_size.labels(f"{stage}_device").observe(size)
            port.watch(observe)


def build_order_handler(cfg: Config, entries: VideoFingerprinter,
                        open_orders: OpenOrders | None = None) -> OrderHandler:
    """The side-topic handler of ``orders.topic``: executes each legal order (docs/orders.md)."""
    return OrderHandler(cfg.orders.topic, cfg.orders.status_topic, cfg.kafka.verdict_topic, cfg.bank.topic,
                        entries, cfg.worker.id, cfg.orders.deadline_hours,
                        parse_category_hours(cfg.orders.category_deadline_hours),
                        cfg.worker.verdict_schema, cfg.kafka.max_event_bytes, open_orders=open_orders,
                        budget_s=0.8 * cfg.worker.video_deadline_s)


def serve(cfg: Config, stop: threading.Event, pipeline: Pipeline | None = None,
          registry: CollectorRegistry | None = None,
          on_http: Callable[[int], None] | None = None) -> None:
    """Run the worker until ``stop`` is set.

    The health server starts first, so the liveness probe passes during the model load;
    readiness waits for the model and for partitions.
    """
    registry = registry or CollectorRegistry()
    metrics = WorkerMetrics(registry)
    device = start_device(cfg.model, metrics)  # "cuda" without a usable GPU: stop here
    calls = DeviceCalls()
    metrics.watch_device_calls(calls.oldest_seconds)
    health = Health(metrics, stall_after_s=cfg.worker.stall_after_s,
                    extra_checks=("bank_loaded",) if cfg.bank.enabled else (),
                    oldest_call=calls.oldest, device_call_deadline_s=cfg.worker.device_call_deadline_s)
    server = HealthServer(registry, health, cfg.metrics.host, cfg.metrics.port).start()
    if on_http is not None:
        on_http(server.port)
    follower = None
    try:
        check_access(cfg)  # a refused password, certificate or ACL ends start-up here, in one line
        models_only = timed(pipeline or build_pipeline(cfg), calls)
        attached = attach_bank(cfg, models_only,
                               lambda: build_sampler(cfg.media, decode_limits(cfg.media, cfg.bank, entries=True)),
                               lambda: build_bank_consumer(cfg.kafka),
                               on_loaded=lambda: health.set("bank_loaded", True))
        pipeline, follower = attached.pipeline, attached.follower
        if attached.bank is not None:
            metrics.watch_bank(attached.bank.index.stats)
        if follower is not None:
            follower.start()
        if device.type == "cuda":
            metrics.watch_gpu(_gpu_memory, _gpu_utilisation)
        observe_device_stages(pipeline, metrics)
        if pipeline.classifier is not None:
            metrics.set_model(pipeline.classifier.info.name, pipeline.classifier.info.checkpoint_sha256)
        health.set("model_loaded", True)
        consumer = build_consumer(cfg.kafka)
        delivery = build_delivery(cfg.kafka, cfg.worker.id, commit=consumer.commit,
                                  on_abort=metrics.transaction_aborts.inc)
        if follower is not None:
            # Uploads are checked against the whole bank or not at all: wait for it.
            while not follower.loaded.wait(5.0) and not stop.is_set():
                log.info("waiting for the hash bank (%s) to load", cfg.bank.topic)
        latencies = Latencies(metrics, LatencyWindow.of(cfg.worker))
        side_topics = list(attached.side_topics)
        open_orders = OpenOrders()
        metrics.watch_orders(open_orders.count, open_orders.oldest_seconds, open_orders.deadline_share)
        if cfg.orders.topic:
            side_topics.append(build_order_handler(cfg, attached.entries, open_orders))
        outputs = Outputs(pipeline, cfg.kafka, cfg.worker, hooks=attached.hooks,
                          side_topics=side_topics, on_start=latencies.started)
        runner = Runner(consumer, delivery, outputs, cfg.kafka, cfg.worker, metrics, health,
                        latencies=latencies)
        log.info("consuming %s as group %s (%s)", cfg.kafka.upload_topic, cfg.kafka.group_id,
                 cfg.kafka.delivery)
        runner.run(stop)
    finally:
        if follower is not None:
            follower.stop()
        server.stop()
