"""Integration fixtures: real broker topics, real decord + MTCNN pipelines, test checkpoints."""
from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from worker.app import build_pipeline, serve
from worker.config import Config, load_config
from worker.core.calibration import Calibration
from worker.models.checkpoint import save_checkpoint
from worker.models.spec import write_model_file
from worker.models.timm_backend import build_model
from worker.runtime.clients import build_results_consumer, ensure_topics
from worker.testing.samples import sample_dir

ARCH = "efficientnet_b0"
# Leaves scores as they are (T = 1), with the [policy] defaults as thresholds: a calibrated
# model for the tests that expect a takedown from the model.
TEST_CALIBRATION = Calibration("temperature", takedown_threshold=0.9, review_threshold=0.5,
                               temperature=1.0, validation={"dataset": "none: a test fixture"})


def _biased_checkpoint(path: Path, logit_bias: float) -> str:
    """A real EfficientNet whose head ignores its features and outputs ``logit_bias``.

    The backbone and the whole loading and inference path are real; only the last layer is
    fixed, so the test knows the score the model must give (sigmoid of the bias).
    """
    torch.manual_seed(0)
    model = build_model(ARCH)
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(logit_bias)
    return save_checkpoint(model, path, architecture=ARCH, version=f"test-bias{logit_bias:+g}")


def write_test_model_file(path: Path, checkpoint: Path, sha256: str,
                          calibration: Calibration | None = TEST_CALIBRATION, **preprocessing):
    """A timm model file for the test checkpoint: full-size MTCNN frames (the sample videos
    are small), 32 frames, mean per track."""
    pre = {"input_size": 224, "frames_per_video": 32, "detector_scale": 1.0,
           "detector_thresholds": [0.6, 0.7, 0.7], **preprocessing}
    return write_model_file(path, name=ARCH, version="test", backend="timm",
                            architecture=ARCH, checkpoints=[(checkpoint, sha256)],
                            preprocessing=pre, aggregation={"method": "mean"}, calibration=calibration)


@pytest.fixture(scope="session")
def fake_face_checkpoint(tmp_path_factory) -> tuple[Path, str]:
    """A checkpoint that scores every face 0.9999 (sigmoid(10))."""
    path = tmp_path_factory.mktemp("ckpt") / "always-fake.pt"
    return path, _biased_checkpoint(path, 10.0)


@pytest.fixture(scope="session")
def fake_face_model_file(fake_face_checkpoint) -> Path:
    """The model file of that checkpoint, with a calibration: the model may take down."""
    path, sha = fake_face_checkpoint
    model_file = path.parent / "always-fake.toml"
    write_test_model_file(model_file, path, sha)
    return model_file


@pytest.fixture(scope="session")
def base_config() -> Config:
    """Test workers may read the sample videos and files the tests write under the temp dir."""
    roots = f"{sample_dir()},{tempfile.gettempdir()}"
    return load_config(env={}, overrides=["metrics.host=127.0.0.1", "metrics.port=0",
                                          "worker.id=test-worker", f"media.file_roots={roots}"])


@pytest.fixture(scope="session")
def pipeline_without_model(base_config):
    return build_pipeline(base_config)


@pytest.fixture(scope="session")
def pipeline_with_model(base_config, fake_face_model_file):
    cfg = base_config.replace(model={"config": str(fake_face_model_file), "device": "cpu"})
    return build_pipeline(cfg)


@pytest.fixture
def kafka_config(kafka_broker, base_config) -> Config:
    """Unique topics and group for one test, created on the real broker."""
    run = uuid.uuid4().hex[:10]
    cfg = base_config.replace(kafka={
        "bootstrap_servers": kafka_broker.bootstrap_servers, "group_id": f"group-{run}",
        "upload_topic": f"uploads-{run}", "verdict_topic": f"verdicts-{run}",
        "dead_letter_topic": f"dead-letters-{run}", "poll_timeout_ms": 200},
        bank={"topic": f"bank-{run}", "score_topic": f"match-scoring-{run}"})
    ensure_topics(cfg.kafka, bank_topic=cfg.bank.topic, extra_topics=(cfg.bank.score_topic,))
    return cfg


@contextmanager
def running_worker(cfg: Config, pipeline, registry: CollectorRegistry | None = None):
    """The real worker (``app.serve``) on a thread; yields its HTTP port."""
    stop = threading.Event()
    ports: list[int] = []
    failure: list[BaseException] = []

    def target():
        try:
            serve(cfg, stop, pipeline=pipeline, registry=registry, on_http=ports.append)
        except BaseException as exc:  # surfaced to the test below
            failure.append(exc)

    thread = threading.Thread(target=target, name="test-worker", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not ports and not failure and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield ports[0] if ports else None
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the worker did not stop within 60 s"
    if failure:
        raise failure[0]


def publish(cfg: Config, values: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap_servers, acks="all")
    try:
        for key, value in values:
            producer.send(cfg.kafka.upload_topic, key=key, value=value).get(timeout=30)
    finally:
        producer.close()


def read_outputs(cfg: Config, expected: int, timeout_s: float = 240.0,
                 settle_s: float = 2.0) -> list[tuple[str, bytes | None, dict]]:
    """Every record on the verdict and dead-letter topics, once ``expected`` have arrived and
    nothing more came for ``settle_s`` (so that a duplicate would be seen)."""
    return drain(build_results_consumer(cfg.kafka), expected, timeout_s, settle_s)


def drain(consumer, expected: int, timeout_s: float = 240.0,
          settle_s: float = 2.0) -> list[tuple[str, bytes | None, dict]]:
    """(topic, key, JSON value) of what ``consumer`` reads, once ``expected`` have arrived and
    nothing more came for ``settle_s``; closes the consumer."""
    out: list[tuple[str, bytes | None, dict]] = []
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    try:
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            for records in batch.values():
                for record in records:
                    out.append((record.topic, record.key, json.loads(record.value)))
            if batch:
                quiet_since = None
            elif len(out) >= expected:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle_s:
                    break
    finally:
        consumer.close()
    return out
