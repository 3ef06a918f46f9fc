"""Wiring: builds the real adapters from the config and runs the worker.

This is the only module that knows which concrete fetcher, decoder, face detector,
classifier and Kafka clients the pipeline gets.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable
from pathlib import Path

import torch  # before decord (imported by .media): see README, "Pitfalls"
from prometheus_client import CollectorRegistry

from worker.config import BankConfig, Config, FacesConfig, MediaConfig, ModelConfig
from worker.faces.mtcnn import MtcnnDetector
from worker.bank.follower import BankFollower
from worker.bank.confirmations import ConfirmationHandler, VideoFingerprinter
from worker.bank.index import BankIndex
from worker.bank.densify import TakedownDensifier
from worker.bank.fingerprint import HashingConfig
from worker.bank.scoring import MatchScoring
from worker.bank.service import HashBank, match_rule
from worker.runtime.clients import build_bank_consumer, build_consumer, build_delivery
from worker.media.fetch import Fetcher
from worker.metrics import Health, HealthServer, WorkerMetrics
from worker.faces.batching import CrossVideoDetector
from worker.models.batching import CrossVideoBatcher
from worker.models.loading import load_detector_model, load_face_detector, model_frame_slack
from worker.models.spec import ModelSpec, load_model_spec
from worker.models.timing import StageTimer
from worker.core.pipeline import FaceClassifier, FaceDetector, Pipeline
from worker.core.policy import Policy
from worker.runtime.runner import Runner
from worker.media.sandbox import SandboxedSampler

log = logging.getLogger("worker.app")


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def build_sampler(media: MediaConfig, bank: BankConfig, entries: bool = False,
                  frame_slack: float | None = None):
    """Decoding in the sandboxed child process, or (``media.sandbox = false``) in-process;
    with the bank on, it also returns about ``bank.hash_rate_hz`` small frames a second
    (``entries``: ``bank.entry_hash_rate_hz``, for fingerprinting bank entries).
    ``frame_slack`` overrides ``media.frame_slack`` (a model file's backend may fix it)."""
    limits = {"max_pixels": media.max_pixels, "max_duration_s": media.max_duration_s,
              "hash_rate_hz": bank.hash_rate_hz if bank.enabled else 0.0,
              "hash_max_frames": bank.max_hash_frames, "hash_min_frames": bank.min_hash_frames,
              "frame_slack": media.frame_slack if frame_slack is None else frame_slack}
    if entries:
        limits.update(hash_rate_hz=bank.entry_hash_rate_hz, hash_max_frames=bank.entry_max_hash_frames)
    if media.sandbox:
        return SandboxedSampler(media.decode_timeout_s, media.decoder_memory_bytes,
                                media.decode_threads, **limits)
    from worker.media.decoding import DecordSampler

    return DecordSampler(media.decode_threads, **limits)


def bank_hashing() -> HashingConfig:
    """How the bank hashes the frames it is given: all of them (the decoder has already
    picked the hash frames: about one a second, more for a short upload, dense for an entry)."""
    return HashingConfig(seconds_per_hash=0)


def build_fetcher(media: MediaConfig) -> Fetcher:
    return Fetcher(media.max_video_bytes, media.fetch_timeout_s, file_roots=media.file_roots,
                   schemes=media.uri_schemes, allowed_networks=media.allowed_networks,
                   max_redirects=media.max_redirects, connect_timeout_s=media.connect_timeout_s)


_TORCH_DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice: one per physical core


def torch_threads(cfg: Config, device: torch.device, default: int = _TORCH_DEFAULT_THREADS) -> int:
    """``worker.torch_threads``, or with 0: on a CPU device with several videos in flight, the
    cores shared among them (measured: 0.99 against 1.12 CPU s a video with two in flight on
    two cores, bench/README.md); otherwise torch's default."""
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
        sampler=build_sampler(cfg.media, cfg.bank,
                              frame_slack=model_frame_slack(spec, cfg.media.frame_slack)),
        detector=build_detector(spec, cfg.faces, device, cfg.worker.processing_threads),
        classifier=build_classifier(spec, cfg.model, device, cfg.worker.processing_threads),
        policy=Policy(cfg.policy.takedown_threshold, cfg.policy.review_threshold),
        frames_per_video=spec.preprocessing.frames_per_video if spec else cfg.media.frames_per_video,
    )


def observe_device_stages(pipeline: Pipeline, metrics: WorkerMetrics) -> None:
    """Each cross-video device call's time (CUDA events on a GPU) and size, as the stages
    ``detect_faces_device`` and ``classify_device``."""
    for stage, port in (("detect_faces", pipeline.detector), ("classify", pipeline.classifier)):
        if isinstance(port, (CrossVideoDetector, CrossVideoBatcher)):
            def observe(size: int, seconds: float, stage: str = stage) -> None:
                metrics.stage.labels(f"{stage}_device").observe(seconds)
                metrics.batch_size.labels(f"{stage}_device").observe(size)
            port.observe = observe


def serve(cfg: Config, stop: threading.Event, pipeline: Pipeline | None = None,
          registry: CollectorRegistry | None = None,
          on_http: Callable[[int], None] | None = None) -> None:
    """Run the worker until ``stop`` is set.

    The health server starts first, so the liveness probe passes during the model load;
    readiness waits for the model and for partitions.
    """
    registry = registry or CollectorRegistry()
    metrics = WorkerMetrics(registry)
    health = Health(metrics, stall_after_s=cfg.worker.stall_after_s,
                    extra_checks=("bank_loaded",) if cfg.bank.enabled else ())
    server = HealthServer(registry, health, cfg.metrics.host, cfg.metrics.port).start()
    if on_http is not None:
        on_http(server.port)
    follower = None
    try:
        pipeline = pipeline or build_pipeline(cfg)
        side_topics: list = []
        score_topic = densify_topic = None
        if cfg.bank.enabled:
            bank = HashBank(BankIndex(match_rule(cfg.bank)), bank_hashing())
            metrics.watch_bank(bank.index.stats)
            follower = BankFollower(lambda: build_bank_consumer(cfg.kafka), cfg.bank.topic,
                                    bank.apply, bank.remove,
                                    on_loaded=lambda: health.set("bank_loaded", True)).start()
            models_only, pipeline = pipeline, pipeline.with_bank(bank)
            entries = VideoFingerprinter(pipeline.fetcher, build_sampler(cfg.media, cfg.bank, entries=True),
                                         bank_hashing(), cfg.bank.entry_keep_distance,
                                         1.0 / cfg.bank.hash_rate_hz)
            if cfg.bank.confirmation_topic:
                side_topics.append(ConfirmationHandler(
                    cfg.bank.confirmation_topic, cfg.bank.topic, entries, cfg.kafka.max_event_bytes))
            if cfg.bank.densify_topic and cfg.bank.add_takedowns:
                densify_topic = cfg.bank.densify_topic
                side_topics.append(TakedownDensifier(densify_topic, cfg.bank.topic, entries,
                                                     bank.index.__contains__, cfg.worker.id,
                                                     cfg.kafka.max_event_bytes))
            if cfg.bank.score_matches and models_only.classifier is not None:
                score_topic = cfg.bank.score_topic
                side_topics.append(MatchScoring(score_topic, cfg.kafka.verdict_topic, models_only,
                                                cfg.worker.id, cfg.kafka.max_event_bytes))
        if torch.cuda.is_available() and select_device(cfg.model.device).type == "cuda":
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
        bank_topic = cfg.bank.topic if cfg.bank.enabled and cfg.bank.add_takedowns else None
        runner = Runner(consumer, delivery, pipeline, cfg.kafka, cfg.worker, metrics, health,
                        bank_topic=bank_topic, side_topics=side_topics, score_topic=score_topic,
                        densify_topic=densify_topic)
        log.info("consuming %s as group %s (%s)", cfg.kafka.upload_topic, cfg.kafka.group_id,
                 cfg.kafka.delivery)
        runner.run(stop)
    finally:
        if follower is not None:
            follower.stop()
        server.stop()
