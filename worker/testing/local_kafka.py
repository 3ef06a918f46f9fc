"""Real Apache Kafka (KRaft mode) on loopback for the quick start and the tests: one broker
(:class:`LocalKafka`), or a cluster of replicated nodes (:class:`LocalKafkaCluster`) for the
fault tests that kill a broker. ``LocalKafka(secure=True)`` is a secured broker instead: TLS
from a CA made for it, SASL/SCRAM-SHA-512 and mTLS listeners, and ACLs enforced by KRaft's
``StandardAuthorizer`` (:class:`BrokerSecurity`).

The broker jars come from Maven Central through ``deploy/kafka-local/pom.xml``; this module
only formats fresh storage, starts ``kafka.Kafka`` on free loopback ports and waits until it
answers. Production deployments point the worker at their own cluster instead.
"""
from __future__ import annotations

import atexit
import base64
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Self

if TYPE_CHECKING:
    from worker.testing.tls import CertFiles

KAFKA_LOCAL_DIR = Path(__file__).resolve().parents[2] / "deploy" / "kafka-local"
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


def _kafka_uuid() -> str:
    """A random id in Kafka's text form (cluster ids, directory ids).

    Like Kafka's own ``Uuid.randomUuid()``, ids whose text starts with "-" are drawn again:
    a command line would read such an id as an option (kafka-storage format -t -x... fails).
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


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


ADMIN_USER = "admin"
BROKER_PRINCIPAL = "broker"  # the broker's own certificate, for its controller and inter-broker links


@dataclass
class BrokerSecurity:
    """What a secured local broker is made of, all under ``folder``: a CA made for it
    (:mod:`worker.testing.tls`), the broker's certificate for 127.0.0.1 and localhost, and
    the SCRAM-SHA-512 users written into its storage when it is formatted (``users``, name
    to password, plus :data:`ADMIN_USER` with ``admin_password``).

    Its listeners: ``SASL_SSL`` (SCRAM-SHA-512 over TLS; the client listener), ``SSL`` with
    client certificates required (mTLS clients; also the broker's own inter-broker link), and
    the controller's, also mTLS. ACLs are enforced by KRaft's ``StandardAuthorizer`` with
    ``allow.everyone.if.no.acl.found=false``; the super users are the admin and the broker.
    A certificate's principal is its common name (``User:<CN>``).
    """

    folder: Path
    users: dict[str, str] = field(default_factory=dict)
    admin_password: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self):
        from worker.testing.tls import CertificateAuthority

        self.folder = Path(self.folder)
        self.ca = CertificateAuthority(self.folder, "local-kafka")
        self.ca_file = self.ca.cert_path
        broker = self.ca.issue(BROKER_PRINCIPAL, hosts=("127.0.0.1", "localhost"),
                               server=True, client=True)
        # Kafka's PEM key store: one file with the key and the certificate chain
        self.keystore = self.folder / "broker-keystore.pem"
        self.keystore.write_bytes(broker.key.read_bytes() + broker.cert.read_bytes())
        self.keystore.chmod(0o600)

    def issue_client_cert(self, common_name: str) -> "CertFiles":
        """A client certificate signed by the broker's CA: the principal ``User:<common_name>``
        on the mTLS listener."""
        return self.ca.issue(common_name, client=True)

    def format_flags(self) -> list[str]:
        users = {**self.users, ADMIN_USER: self.admin_password}
        return [f"--add-scram=SCRAM-SHA-512=[name={name},password={password}]"
                for name, password in users.items()]

    def broker_properties(self, node: "_Node") -> dict[str, str]:
        jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return {
            "listeners": f"SASL_SSL://{node.address},SSL://{node.ssl_address},"
                         f"CONTROLLER://{node.controller_address}",
            "advertised.listeners": f"SASL_SSL://{node.address},SSL://{node.ssl_address}",
            "listener.security.protocol.map": "CONTROLLER:SSL,SSL:SSL,SASL_SSL:SASL_SSL",
            "inter.broker.listener.name": "SSL",
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca_file),
            "ssl.client.auth": "required",
            "listener.name.sasl_ssl.ssl.client.auth": "none",
            # User:<CN> rather than User:CN=<CN>
            "ssl.principal.mapping.rules": "RULE:^CN=([^,]+)$/$1/,DEFAULT",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN_USER};User:{BROKER_PRINCIPAL}",
            "allow.everyone.if.no.acl.found": "false",
        }

    def sasl_options(self, username: str, password: str) -> dict[str, Any]:
        """kafka-python options for ``username`` on the SASL_SSL listener."""
        return {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": username, "sasl_plain_password": password,
                "ssl_cafile": str(self.ca_file)}

    def admin_options(self) -> dict[str, Any]:
        return self.sasl_options(ADMIN_USER, self.admin_password)


class _Node:
    """One ``kafka.Kafka`` process, broker and controller at once, with its own ports,
    storage, configuration and log file under ``workdir``."""

    def __init__(self, workdir: Path, node_id: int = 1,
                 jvm_options: tuple[str, ...] = ("-Xms256m", "-Xmx768m"),
                 security: "BrokerSecurity | None" = None):
        self.workdir = workdir
        self.node_id = node_id
        self.jvm_options = jvm_options
        self.security = security
        self.port = _free_port()  # the client listener: PLAINTEXT, or SASL_SSL when secured
        self.controller_port = _free_port()
        self.ssl_port = _free_port() if security else None  # mTLS clients and the broker itself
        self.ssl_address = f"127.0.0.1:{self.ssl_port}" if security else None
        self.directory_id = _kafka_uuid()
        self.address = f"127.0.0.1:{self.port}"
        self.controller_address = f"127.0.0.1:{self.controller_port}"
        self.config_path = workdir / "server.properties"
        self.log_path = workdir / "broker.log"
        self.proc: subprocess.Popen | None = None

    def _java(self, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise BrokerError("a Java runtime (java) is needed to run the Kafka broker")
        return [
            java, *self.jvm_options, "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.yaml'}",
            "-cp", str(ensure_jars() / "*"), *args,
        ]

    def write_config(self, quorum: str, replication: int, min_isr: int) -> None:
        """``quorum``: every controller's address; ``replication`` and ``min_isr`` apply to
        the internal topics and to new topics that do not say otherwise."""
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.bootstrap.servers": quorum,
            "listeners": f"PLAINTEXT://{self.address},CONTROLLER://{self.controller_address}",
            "advertised.listeners": f"PLAINTEXT://{self.address}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "1",
            "default.replication.factor": str(replication),
            "min.insync.replicas": str(min_isr),
            "offsets.topic.replication.factor": str(replication),
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": str(replication),
            "transaction.state.log.min.isr": str(min_isr),
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": str(replication),
            "share.coordinator.state.topic.min.isr": str(min_isr),
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
        }
        if self.security is not None:
            props.update(self.security.broker_properties(self))
        self.config_path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.workdir / "log4j2.yaml").write_text(_LOG4J2.format(log=self.log_path))

    def format(self, cluster_id: str, *quorum_flags: str) -> None:
        if self.security is not None:
            quorum_flags = (*quorum_flags, *self.security.format_flags())
        fmt = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", *quorum_flags,
                       f"--cluster-id={cluster_id}", f"--config={self.config_path}"),
            capture_output=True, text=True,
        )
        if fmt.returncode != 0:
            raise BrokerError(f"formatting Kafka storage of node {self.node_id} failed:\n"
                              f"{fmt.stdout}\n{fmt.stderr}")

    def launch(self) -> None:
        with open(self.workdir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(
                self._java("kafka.Kafka", str(self.config_path)),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def check_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise BrokerError(f"broker {self.node_id} exited with {code}; see {self.log_path}")

    def listening(self) -> bool:
        # A plain TCP check before any Kafka client: the client logs every refused connection.
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def request_stop(self) -> None:
        """SIGTERM, a clean shutdown, without waiting for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def terminate(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, then SIGKILL if the process is still there after ``timeout_s``."""
        if self.proc is not None and self.proc.poll() is None:
            self.request_stop()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


def _wait_ready(nodes: list[_Node], timeout_s: float) -> None:
    """Until every node takes connections, and all of them are registered as unfenced
    brokers and a controller is known, as seen through the Kafka protocol."""
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + timeout_s
    last_error: Exception | str | None = None
    while time.monotonic() < deadline:
        for node in nodes:
            node.check_running()
        if not all(node.listening() for node in nodes):
            time.sleep(0.5)
            continue
        try:
            security = nodes[0].security
            admin = KafkaAdminClient(bootstrap_servers=[n.address for n in nodes],
                                     request_timeout_ms=5000,
                                     **(security.admin_options() if security else {}))
            try:
                cluster = admin.describe_cluster()
            finally:
                admin.close()
            unfenced = [b for b in cluster["brokers"] if not b.get("is_fenced")]
            if len(unfenced) >= len(nodes) and cluster.get("controller_id", -1) >= 0:
                return
            last_error = f"{len(unfenced)} of {len(nodes)} broker(s) registered"
        except Exception as exc:  # the brokers are still starting
            last_error = exc
        time.sleep(0.5)
    raise BrokerError(f"Kafka did not answer within {timeout_s}s: {last_error}")


class _ScratchKafka:
    """What the broker and the cluster share: a working folder of their own unless they are
    given one (``KAFKA_LOCAL_KEEP=1`` keeps it, logs included), the wait until Kafka answers,
    and use as a context manager."""

    def __init__(self, workdir: Path | None, prefix: str, start_timeout_s: float):
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=prefix))
        self.start_timeout_s = start_timeout_s

    def _await(self, nodes: list[_Node]) -> None:
        try:
            _wait_ready(nodes, self.start_timeout_s)
        except BrokerError:
            self.stop()
            raise

    def _remove_workdir(self) -> None:
        if self._own_workdir and not os.environ.get("KAFKA_LOCAL_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class LocalKafka(_ScratchKafka):
    """One broker process with its own storage; use as a context manager.

    ``secure=True``: a secured broker (:class:`BrokerSecurity`, under ``security``) whose
    ``bootstrap_servers`` is its SASL_SSL listener and ``ssl_bootstrap_servers`` its mTLS
    listener, with the SCRAM-SHA-512 ``users`` (name to password); :meth:`admin`,
    :meth:`add_user` and :meth:`grant` manage topics, users and ACLs as the super user.
    """

    def __init__(self, workdir: Path | None = None, start_timeout_s: float = 90.0,
                 secure: bool = False, users: dict[str, str] | None = None):
        super().__init__(workdir, "kafka-local-", start_timeout_s)
        self.security = BrokerSecurity(self.workdir / "tls", dict(users or {})) if secure else None
        self._node = _Node(self.workdir, security=self.security)
        self.port = self._node.port
        self.controller_port = self._node.controller_port
        self.bootstrap_servers = self._node.address
        self.ssl_bootstrap_servers = self._node.ssl_address
        self.log_path = self._node.log_path

    def start(self) -> "LocalKafka":
        self._node.write_config(self._node.controller_address, replication=1, min_isr=1)
        self._node.format(_kafka_uuid(), "--standalone")
        atexit.register(self.stop)  # never leave a broker behind if the caller dies
        self._node.launch()
        self._await([self._node])
        return self

    def restart(self) -> None:
        """Stop the broker cleanly and start it again on the same ports and storage."""
        self._node.terminate()
        self._node.launch()
        self._await([self._node])

    def stop(self) -> None:
        self._node.terminate()
        self._remove_workdir()

    def admin(self):
        """A kafka-python admin client; on a secured broker, the super user over SASL_SSL."""
        from kafka import KafkaAdminClient

        options = self.security.admin_options() if self.security else {}
        return KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, **options)

    def add_user(self, name: str, password: str | None = None, timeout_s: float = 15.0) -> str:
        """A SCRAM-SHA-512 user on the secured broker, usable once this returns; its password."""
        from kafka.admin import ScramMechanism, UserScramCredentialUpsertion

        password = password or uuid.uuid4().hex
        admin = self.admin()
        try:
            failed = admin.alter_user_scram_credentials(
                [UserScramCredentialUpsertion(name, ScramMechanism.SCRAM_SHA_512, password)]).get(name)
            if failed:
                raise BrokerError(f"adding user {name} failed: {failed}")
            deadline = time.monotonic() + timeout_s
            while admin.describe_user_scram_credentials([name])[name]["error"]:
                if time.monotonic() > deadline:
                    raise BrokerError(f"the broker did not add user {name} within {timeout_s}s")
                time.sleep(0.1)
        finally:
            admin.close()
        return password

    def grant(self, acls: Iterable[Any], timeout_s: float = 15.0) -> None:
        """Create kafka-python ``ACL`` objects on the secured broker, and wait until its
        authorizer holds them (it applies them from the metadata log, after the request)."""
        from kafka.admin import (ACLFilter, ACLOperation, ACLPermissionType,
                                 ACLResourcePatternType, ResourcePatternFilter, ResourceType)

        acls = set(acls)
        if not acls:
            return
        every = ACLFilter(None, None, ACLOperation.ANY, ACLPermissionType.ANY,
                          ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY))
        admin = self.admin()
        try:
            result = admin.create_acls(list(acls))
            if result["failed"]:
                raise BrokerError(f"creating ACLs failed: {result['failed']}")
            deadline = time.monotonic() + timeout_s
            while not acls <= set(admin.describe_acls(every)[0]):
                if time.monotonic() > deadline:
                    raise BrokerError(f"the broker did not apply {len(acls)} ACL(s) within {timeout_s}s")
                time.sleep(0.1)
        finally:
            admin.close()


class LocalKafkaCluster(_ScratchKafka):
    """``size`` combined broker+controller nodes, one KRaft quorum and one cluster id, with
    every topic replicated to ``replication`` nodes and writes needing ``min_isr`` of them:
    with the defaults (3, 3, 2) one node can die and the cluster keeps accepting writes.
    Node ids run from 1 to ``size``; use as a context manager."""

    def __init__(self, size: int = 3, replication: int = 3, min_isr: int = 2,
                 workdir: Path | None = None, start_timeout_s: float = 120.0, heap: str = "512m"):
        super().__init__(workdir, "kafka-cluster-", start_timeout_s)
        self.replication = replication
        self.min_isr = min_isr
        # Small heaps, and the quick-starting C1 compiler only: three JVMs share CI's two cores.
        jvm = ("-Xms256m", f"-Xmx{heap}", "-XX:TieredStopAtLevel=1")
        self.nodes = {i: _Node(self.workdir / f"node-{i}", i, jvm) for i in range(1, size + 1)}
        self.bootstrap_servers = ",".join(n.address for n in self.nodes.values())
        self.log_paths = {i: n.log_path for i, n in self.nodes.items()}

    def start(self) -> "LocalKafkaCluster":
        nodes = list(self.nodes.values())
        quorum = ",".join(n.controller_address for n in nodes)
        # A dynamic quorum (KIP-853): every node is formatted with the same initial voters,
        # each named by its id, controller address and metadata directory id.
        voters = ",".join(f"{n.node_id}@{n.controller_address}:{n.directory_id}" for n in nodes)
        cluster_id = _kafka_uuid()
        for node in nodes:
            node.workdir.mkdir(parents=True, exist_ok=True)
            node.write_config(quorum, self.replication, self.min_isr)
            node.format(cluster_id, "--initial-controllers", voters)
        atexit.register(self.stop)  # never leave a broker behind if the caller dies
        for node in nodes:
            node.launch()
        self._await(nodes)
        return self

    def kill(self, node_id: int) -> None:
        """SIGKILL one node: no clean shutdown, no leadership handed over."""
        self.nodes[node_id].kill()

    def stop(self) -> None:
        # All at once: the last node stopped alone would wait for a quorum that has gone.
        for node in self.nodes.values():
            node.request_stop()
        deadline = time.monotonic() + 15.0
        for node in self.nodes.values():
            node.terminate(timeout_s=max(0.1, deadline - time.monotonic()))
        self._remove_workdir()
