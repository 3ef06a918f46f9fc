"""A real single-node Apache Kafka broker (KRaft mode) for the quick start and the tests.

The broker jars come from Maven Central through ``deploy/kafka-local/pom.xml``; this module
only formats fresh storage, starts ``kafka.Kafka`` on free loopback ports and waits until it
answers. Production deployments point the worker at their own cluster instead.
"""
from __future__ import annotations

import atexit
import base64
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

KAFKA_LOCAL_DIR = Path(__file__).resolve().parent.parent / "deploy" / "kafka-local"
JARS_DIR = KAFKA_LOCAL_DIR / "target" / "lib"


class BrokerError(RuntimeError):
    """The local broker could not be prepared or started."""


def ensure_jars() -> Path:
    """Resolve the broker jars with Maven once; later calls reuse the cached folder."""
    if JARS_DIR.is_dir() and any(JARS_DIR.glob("kafka_2.13-*.jar")):
        return JARS_DIR
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is needed to fetch the Kafka broker jars")
    result = subprocess.run(
        [mvn, "-B", "-q", "dependency:copy-dependencies"],
        cwd=KAFKA_LOCAL_DIR, capture_output=True, text=True,
    )
    if result.returncode != 0 or not any(JARS_DIR.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"mvn could not fetch the Kafka jars:\n{result.stdout}\n{result.stderr}")
    return JARS_DIR


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


_LOG4J2 = """\
Configuration:
  Appenders:
    File:
      name: file
      fileName: "{log}"
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: file
"""


class LocalKafka:
    """One broker process with its own storage; use as a context manager."""

    def __init__(self, workdir: Path | None = None, start_timeout_s: float = 90.0):
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kafka-local-"))
        self.start_timeout_s = start_timeout_s
        self.port = _free_port()
        self.controller_port = _free_port()
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        self.log_path = self.workdir / "broker.log"
        self._proc: subprocess.Popen | None = None

    def _java(self, *args: str, **kwargs) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise BrokerError("a Java runtime (java) is needed to run the Kafka broker")
        return [
            java, "-Xms256m", "-Xmx768m", "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.yaml'}",
            "-cp", str(ensure_jars() / "*"), *args,
        ]

    def _write_config(self) -> Path:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
        }
        path = self.workdir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.workdir / "log4j2.yaml").write_text(_LOG4J2.format(log=self.log_path))
        return path

    def start(self) -> "LocalKafka":
        config = self._write_config()
        self._format(config)
        atexit.register(self.stop)  # never leave a broker behind if the caller dies
        self._launch(config)
        return self

    def restart(self) -> None:
        """Stop the broker cleanly and start it again on the same ports and storage."""
        self._terminate()
        self._launch(self.workdir / "server.properties")

    def _format(self, config: Path) -> None:
        fmt = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", "--standalone",
                       "-t", _cluster_id(), "-c", str(config)),
            capture_output=True, text=True,
        )
        if fmt.returncode != 0:
            raise BrokerError(f"formatting Kafka storage failed:\n{fmt.stdout}\n{fmt.stderr}")

    def _launch(self, config: Path) -> None:
        with open(self.workdir / "stdout.log", "ab") as out:
            self._proc = subprocess.Popen(
                self._java("kafka.Kafka", str(config)),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        from kafka import KafkaAdminClient

        deadline = time.monotonic() + self.start_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"the broker exited with {self._proc.returncode}; see {self.log_path}")
            try:
                # A plain TCP check first: the Kafka client logs every refused connection.
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers,
                                         request_timeout_ms=5000)
                try:
                    admin.list_topics()
                    return
                finally:
                    admin.close()
            except Exception as exc:  # the broker is still starting
                last_error = exc
                time.sleep(0.5)
        self.stop()
        raise BrokerError(f"the broker did not answer within {self.start_timeout_s}s: {last_error}")

    def _terminate(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        self._terminate()
        if self._own_workdir and not os.environ.get("KAFKA_LOCAL_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalKafka":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
