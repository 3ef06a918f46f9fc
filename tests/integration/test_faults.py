"""Fault tests against real Kafka: workers killed with SIGKILL, a worker lost from a group of
two, a broker restarted mid-stream. Each ends with exactly one committed result per input
event, read with isolation_level=read_committed, and prints its counts."""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import torch
from kafka import KafkaProducer

from worker.core.events import upload_event
from worker.models.checkpoint import sha256_of
from worker.models.spec import write_model_file
from worker.runtime.clients import client_options, ensure_topics
from worker.testing.local_kafka import LocalKafka
from worker.testing.samples import sample_video

from .conftest import read_outputs

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """``python -m worker run`` as a child process, configured through the environment."""

    def __init__(self, cfg, worker_id: str, log_dir: Path, static: bool = False, **env: str):
        self.env = {**os.environ,
                    "MODERATION_KAFKA_BOOTSTRAP_SERVERS": cfg.kafka.bootstrap_servers,
                    "MODERATION_KAFKA_GROUP_ID": cfg.kafka.group_id,
                    "MODERATION_KAFKA_UPLOAD_TOPIC": cfg.kafka.upload_topic,
                    "MODERATION_KAFKA_VERDICT_TOPIC": cfg.kafka.verdict_topic,
                    "MODERATION_KAFKA_DEAD_LETTER_TOPIC": cfg.kafka.dead_letter_topic,
                    "MODERATION_BANK_TOPIC": cfg.bank.topic,
                    "MODERATION_KAFKA_SESSION_TIMEOUT_MS": "6000",
                    "MODERATION_KAFKA_POLL_TIMEOUT_MS": "200",
                    "MODERATION_MEDIA_FRAMES_PER_VIDEO": "8",
                    "MODERATION_MEDIA_FILE_ROOTS": ",".join(cfg.media.file_roots),
                    "MODERATION_METRICS_HOST": "127.0.0.1",
                    "MODERATION_METRICS_PORT": "0",
                    "MODERATION_WORKER_ID": worker_id,
                    # several videos of a partition in flight: the reorder window and
                    # the cross-video batchers are under the faults too
                    "MODERATION_WORKER_PROCESSING_THREADS": "3",
                    "MODERATION_WORKER_SHUTDOWN_DEADLINE_S": "20"}
        if static:
            self.env["MODERATION_KAFKA_GROUP_INSTANCE_ID"] = worker_id
        self.env.update(env)
        self.log = log_dir / f"{worker_id}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "worker", "run"], cwd=REPO,
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def publish_stream(cfg, count: int, bad_every: int = 5) -> dict:
    """``count`` upload events, every ``bad_every``-th one broken; returns each input's identity
    (its event id, or its partition and offset when it has none) -> 0."""
    clip = sample_video("carphone_pristine.mp4")
    producer = KafkaProducer(acks="all", **client_options(cfg.kafka))  # its credentials too, if any
    inputs = {}
    try:
        for i in range(count):
            video_id = f"video-{i:03d}"
            if i % bad_every == bad_every - 1:
                meta = producer.send(cfg.kafka.upload_topic, key=video_id.encode(),
                                     value=b"not json " + video_id.encode()).get(30)
                inputs[(meta.partition, meta.offset)] = 0
            else:
                event_id = f"evt-{video_id}"
                producer.send(cfg.kafka.upload_topic, key=video_id.encode(),
                              value=upload_event(video_id, clip.as_uri(), "fault-test",
                                                 event_id=event_id)).get(30)
                inputs[event_id] = 0
    finally:
        producer.close()
    return inputs


def tally(name: str, inputs: dict, outputs: list, capsys=None) -> dict:
    """Count outputs per input; print the figures (past pytest's capture, given ``capsys``)."""
    seen = Counter()
    verdicts = dead = 0
    for _, _, record in outputs:
        data = record["data"]
        if record["type"].endswith("verdict.v1"):
            verdicts += 1
            seen[data["source_event_id"]] += 1
        else:
            dead += 1
            seen[data["source_event_id"] or (data["source_partition"], data["source_offset"])] += 1
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    missing = [k for k in inputs if seen[k] == 0]
    unknown = [k for k in seen if k not in inputs]
    figures = {"events_in": len(inputs), "verdicts": verdicts, "dead_letters": dead,
               "duplicates": duplicates, "missing": len(missing), "unknown": len(unknown)}
    line = f"\n[{name}] " + " ".join(f"{k}={v}" for k, v in figures.items())
    if capsys is None:
        print(line)
    else:
        with capsys.disabled():
            print(line)
    return figures


def stream_through_fault(cfg, inputs: dict, worker: WorkerProcess, fault) -> list:
    """Start ``worker``, call ``fault()`` once a few results are committed, then read every
    output; the worker must have lived through it and stop cleanly."""
    worker.start()
    try:
        read_outputs(cfg, expected=3, timeout_s=120, settle_s=0)
        fault()
        outputs = read_outputs(cfg, expected=len(inputs), timeout_s=300, settle_s=4.0)
        assert worker.alive(), worker.log.read_text()[-3000:]
        assert worker.terminate() == 0
    finally:
        if worker.alive():
            worker.kill()
    return outputs


def test_sigkill_at_random_points_then_restart(kafka_config, tmp_path, capsys):
    cfg = kafka_config
    seed = int(os.environ.get("FAULT_SEED", time.time()))
    rng = random.Random(seed)
    print(f"\nFAULT_SEED={seed}")
    inputs = publish_stream(cfg, 20)
    worker = WorkerProcess(cfg, "killed-worker", tmp_path, static=True).start()
    kills = []
    try:
        for _ in range(3):
            # Wait for the worker to commit something new, then kill it a random moment
            # later: mid-video, mid-transaction or between events.
            before = kills[-1] if kills else 0
            progress = read_outputs(cfg, expected=before + 1, timeout_s=180, settle_s=0)
            assert len(progress) > before or len(progress) == len(inputs), worker.log.read_text()[-3000:]
            time.sleep(rng.uniform(0.0, 1.5))
            assert worker.alive(), worker.log.read_text()[-3000:]
            worker.kill()
            kills.append(len(read_outputs(cfg, expected=0, timeout_s=10, settle_s=0.5)))
            worker.start()
        print(f"results committed when each SIGKILL landed: {kills}")
        outputs = read_outputs(cfg, expected=len(inputs), timeout_s=300, settle_s=4.0)
        assert worker.terminate() == 0
    finally:
        if worker.alive():
            worker.kill()
    figures = tally(f"sigkill seed={seed} committed-at-kills={kills}", inputs, outputs, capsys)
    assert len(kills) == 3
    assert figures == {"events_in": 20, "verdicts": 16, "dead_letters": 4, "duplicates": 0,
                       "missing": 0, "unknown": 0}


def test_two_workers_in_a_group_lose_one(kafka_broker, base_config, tmp_path, capsys):
    run = os.urandom(4).hex()
    cfg = base_config.replace(kafka={
        "bootstrap_servers": kafka_broker.bootstrap_servers, "group_id": f"pair-{run}",
        "upload_topic": f"pair-uploads-{run}", "verdict_topic": f"pair-verdicts-{run}",
        "dead_letter_topic": f"pair-dead-{run}"})
    ensure_topics(cfg.kafka, partitions=2, bank_topic=cfg.bank.topic)
    inputs = publish_stream(cfg, 20)
    first = WorkerProcess(cfg, "pair-a", tmp_path).start()
    second = WorkerProcess(cfg, "pair-b", tmp_path).start()
    try:
        read_outputs(cfg, expected=4, timeout_s=120, settle_s=0)  # both are working
        second.kill()  # its partition moves to the first after the session timeout
        outputs = read_outputs(cfg, expected=len(inputs), timeout_s=300, settle_s=4.0)
        assert first.terminate() == 0
    finally:
        for worker in (first, second):
            if worker.alive():
                worker.kill()
    figures = tally("two-workers-kill-one", inputs, outputs, capsys)
    logs = "\n".join(f"--- {w.log.name}\n{w.log.read_text()[-4000:]}" for w in (first, second))
    assert figures["duplicates"] == 0 and figures["missing"] == 0 and figures["unknown"] == 0, logs
    assert figures["verdicts"] == 16 and figures["dead_letters"] == 4


def test_broker_restart_mid_stream(base_config, tmp_path, capsys):
    broker = LocalKafka().start()
    try:
        cfg = base_config.replace(kafka={
            "bootstrap_servers": broker.bootstrap_servers, "group_id": "restart-group",
            "upload_topic": "restart-uploads", "verdict_topic": "restart-verdicts",
            "dead_letter_topic": "restart-dead"})
        ensure_topics(cfg.kafka, bank_topic=cfg.bank.topic)
        inputs = publish_stream(cfg, 15)
        outputs = stream_through_fault(cfg, inputs, WorkerProcess(cfg, "restart-worker", tmp_path),
                                       broker.restart)
    finally:
        broker.stop()
    figures = tally("broker-restart", inputs, outputs, capsys)
    assert figures == {"events_in": 15, "verdicts": 12, "dead_letters": 3, "duplicates": 0,
                       "missing": 0, "unknown": 0}


class NeverReturns(torch.nn.Module):
    """A TorchScript detector whose forward never returns on a real face crop: a hung device
    call. The load-time warm-up (one flat image) passes; the first real batch spins for good."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = 0
        if bool(torch.std(x[:, 0]) > 1e-6):
            while n >= 0:
                n += 1
                if n > 4611686018427387000:
                    n = 0
        return x.mean(dim=(1, 2, 3)).unsqueeze(1) + float(n)


class Mean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3)).unsqueeze(1)


def scripted_model_file(folder: Path, net: torch.nn.Module, name: str) -> Path:
    weights = folder / f"{name}.pt"
    torch.jit.script(net.eval()).save(str(weights))
    path = folder / f"{name}.toml"
    write_model_file(path, name=name, version="1", backend="torchscript",
                            architecture="", checkpoints=[(weights, sha256_of(weights))],
                            preprocessing={"input_size": 64, "frames_per_video": 8,
                                           "detector_scale": 1.0,
                                           "detector_thresholds": [0.6, 0.7, 0.7]},
                            aggregation={"method": "mean"})
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def livez(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:  # not serving yet
        return 0, str(error)


def test_a_hung_device_call_fails_liveness_and_the_restart_delivers_exactly_once(
        kafka_config, tmp_path, capsys):
    """The detector's first real call never returns: /livez turns 503 past
    worker.device_call_deadline_s while the videos wait behind it; the pod is killed (what the
    kubelet does after the probe fails) and its replacement, with a working model, delivers
    exactly one result per event."""
    cfg = kafka_config
    inputs = publish_stream(cfg, 6, bad_every=3)
    port = _free_port()
    hung = WorkerProcess(cfg, "hung-worker", tmp_path, static=True,
                         MODERATION_MODEL_CONFIG=str(scripted_model_file(tmp_path, NeverReturns(), "hangs")),
                         MODERATION_MODEL_DEVICE="cpu",
                         MODERATION_WORKER_DEVICE_CALL_DEADLINE_S="5",
                         MODERATION_METRICS_PORT=str(port)).start()
    try:
        deadline = time.monotonic() + 240
        status, body = livez(port)
        while status != 503 and time.monotonic() < deadline:
            assert hung.alive(), hung.log.read_text()[-3000:]
            time.sleep(0.5)
            status, body = livez(port)
        assert status == 503, hung.log.read_text()[-3000:]
        assert "classify model call has been running for" in body and "(deadline 5 s)" in body
        assert hung.alive()  # the process is up: only the probe sees the hang
        before = read_outputs(cfg, expected=0, timeout_s=5, settle_s=1.0)
        assert not [o for o in before if o[2]["type"].endswith("verdict.v1")]  # nothing got past it
        hung.kill()
    finally:
        if hung.alive():
            hung.kill()
    log = hung.log.read_text()
    assert log.count("liveness fails: a classify model call has been running") == 1, log[-3000:]

    replacement = WorkerProcess(cfg, "hung-worker", tmp_path, static=True,
                                MODERATION_MODEL_CONFIG=str(scripted_model_file(tmp_path, Mean(), "works")),
                                MODERATION_MODEL_DEVICE="cpu").start()
    try:
        outputs = read_outputs(cfg, expected=len(inputs), timeout_s=300, settle_s=4.0)
        assert replacement.terminate() == 0
    finally:
        if replacement.alive():
            replacement.kill()
    figures = tally("hung-device-call", inputs, outputs, capsys)
    assert figures == {"events_in": 6, "verdicts": 4, "dead_letters": 2, "duplicates": 0,
                       "missing": 0, "unknown": 0}, replacement.log.read_text()[-3000:]
