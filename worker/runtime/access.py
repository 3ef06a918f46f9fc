"""What the worker's Kafka principal must be allowed to do, and the start-up check that it is.

On a secured cluster a wrong password, a CA file that does not sign the broker's certificate
or a missing ACL would otherwise show up as kafka-python retrying in the log for ever, or as
a poll loop that logs a traceback a second. :func:`required_grants` is the one list of ACLs a
worker needs for its config (the tests grant exactly these and nothing else, and
docs/security.md lists the same ``kafka-acls.sh`` commands); :func:`check_access` runs before
the models load and ends start-up with one :class:`ClusterAccessError` line that names the
problem. ``tests/integration/test_secure_kafka.py`` holds each case against a secured broker.
"""
from __future__ import annotations

import logging
import ssl
import time
from contextlib import contextmanager
from dataclasses import dataclass

from kafka import KafkaAdminClient
from kafka.errors import (CoordinatorLoadInProgressError, CoordinatorNotAvailableError,
                          GroupAuthorizationFailedError, KafkaError, KafkaTimeoutError,
                          NotCoordinatorError, SaslAuthenticationFailedError,
                          TopicAuthorizationFailedError, TransactionalIdAuthorizationFailedError)

from worker.config import Config, KafkaConfig
from worker.runtime.clients import (build_producer, client_options, transactional_id,
                                    transactional_id_prefix)

log = logging.getLogger("worker.runtime.access")

_TOPIC_AUTHORIZATION_FAILED = TopicAuthorizationFailedError.errno
_UNKNOWN_TOPIC = 3
_ATTEMPT_S = 5.0  # one bootstrap attempt of the check
_COORDINATOR_WAIT = (CoordinatorNotAvailableError, CoordinatorLoadInProgressError, NotCoordinatorError)


class ClusterAccessError(RuntimeError):
    """The cluster refused the worker: authentication, TLS trust or an ACL. Retrying will
    not help; an operator must fix the credentials, the CA file or the grants."""

    exit_code = 3


@dataclass(frozen=True)
class Grant:
    """One ACL the worker's principal needs: ``operation`` (READ or WRITE, each of which
    implies DESCRIBE) on a ``topic``, ``group`` or ``transactional-id``; ``prefixed``: on
    every name that starts with ``name``."""

    operation: str
    resource: str
    name: str
    prefixed: bool = False
    why: str = ""

    def __str__(self) -> str:
        names = "names starting with " if self.prefixed else ""
        return f"{self.operation} on {self.resource} {names}'{self.name}'"

    def command(self, principal: str, tool: str = "$ACLS") -> str:
        """The ``kafka-acls.sh`` arguments that grant it; ``tool`` stands for
        ``kafka-acls.sh --bootstrap-server ... --command-config ...``."""
        resource = f"--{self.resource} {self.name}"
        if self.prefixed:
            resource += " --resource-pattern-type prefixed"
        return (f"{tool} --add --allow-principal {principal} "
                f"--operation {self.operation.title()} {resource}")

    def acl(self, principal: str, host: str = "*"):
        """As a kafka-python ``ACL``, for ``KafkaAdminClient.create_acls``."""
        from kafka.admin import (ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType,
                                 ResourcePattern, ResourceType)

        kind = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP,
                "transactional-id": ResourceType.TRANSACTIONAL_ID}[self.resource]
        pattern = ACLResourcePatternType.PREFIXED if self.prefixed else ACLResourcePatternType.LITERAL
        return ACL(principal, host, ACLOperation[self.operation], ACLPermissionType.ALLOW,
                   ResourcePattern(kind, self.name, pattern))


def required_grants(cfg: Config) -> list[Grant]:
    """Every ACL a worker with ``cfg`` needs, and nothing more. No cluster-level grant: the
    idempotent producer's id is allowed by WRITE on a topic (KIP-679), and the worker
    creates no topics."""
    kafka, bank = cfg.kafka, cfg.bank
    grants = [
        Grant("READ", "topic", kafka.upload_topic, why="the upload events"),
        Grant("WRITE", "topic", kafka.verdict_topic, why="verdicts, and match scores"),
        Grant("WRITE", "topic", kafka.dead_letter_topic, why="dead letters"),
        Grant("READ", "group", kafka.group_id, why="the worker group: join, commit offsets"),
    ]
    if kafka.delivery == "exactly_once":
        grants.append(Grant("WRITE", "transactional-id", transactional_id_prefix(kafka),
                            prefixed=True, why="one transactional id per worker: the prefix, then worker.id"))
    if not bank.enabled:
        return grants
    grants.append(Grant("READ", "topic", bank.topic, why="every worker follows the whole bank, outside any group"))
    if bank.add_takedowns or bank.confirmation_topic or cfg.orders.topic:
        grants.append(Grant("WRITE", "topic", bank.topic, why="takedowns, confirmations and orders add bank entries"))
    if bank.confirmation_topic:
        grants.append(Grant("READ", "topic", bank.confirmation_topic, why="reviewers' confirmations"))
    if bank.densify_topic and bank.add_takedowns:
        grants += [Grant("WRITE", "topic", bank.densify_topic, why="takedowns queued to fingerprint densely"),
                   Grant("READ", "topic", bank.densify_topic, why="the same queue, consumed by the group")]
    if bank.score_matches and cfg.model.config:
        grants += [Grant("WRITE", "topic", bank.score_topic, why="matched uploads queued for the models"),
                   Grant("READ", "topic", bank.score_topic, why="the same queue, consumed by the group")]
    if cfg.orders.topic:
        grants += [Grant("READ", "topic", cfg.orders.topic, why="legal orders"),
                   Grant("WRITE", "topic", cfg.orders.status_topic, why="each order's status record")]
    return grants


def principal_of(kafka: KafkaConfig) -> str:
    """The principal the broker sees, as far as the worker can tell."""
    if kafka.security_protocol.startswith("SASL"):
        return f"User:{kafka.sasl_username}"
    if kafka.security_protocol == "SSL" and kafka.ssl_certfile:
        return f"the principal of the certificate in kafka.ssl_certfile ({kafka.ssl_certfile})"
    return "User:ANONYMOUS"


def check_access(cfg: Config, timeout_s: float = 30.0) -> None:
    """Connect as the worker, and check each of :func:`required_grants` the broker can
    tell it about: the topics' authorized operations, the group, and (with exactly-once)
    its transactional id and offset commits. Raises :class:`ClusterAccessError`."""
    kafka = cfg.kafka
    admin = _connect(kafka, timeout_s)
    try:
        grants = required_grants(cfg)
        missing = _missing_on_topics(admin, [g for g in grants if g.resource == "topic"])
        group = next(g for g in grants if g.resource == "group")
        if not _group_allowed(admin, kafka.group_id, time.monotonic() + timeout_s):
            missing.append(group)
    finally:
        admin.close()
    if not missing and kafka.delivery == "exactly_once":
        missing += _missing_for_transactions(kafka, cfg.worker.id, grants)
    if missing:
        raise ClusterAccessError(
            f"not authorized: the worker's principal ({principal_of(kafka)}) lacks "
            f"{', '.join(map(str, missing))}; grant them as docs/security.md ('Kafka ACLs') shows")


def _connect(kafka: KafkaConfig, timeout_s: float) -> KafkaAdminClient:
    """An admin client as the worker. Short bootstrap attempts until ``timeout_s``, so that
    a refused password or an untrusted certificate ends the wait after the first."""
    deadline = time.monotonic() + timeout_s
    with _connection_errors() as errors:
        while True:
            clients: list = []

            def keep(**configs):  # to close the client of a failed attempt: its IO thread too
                clients.append(KafkaAdminClient.DEFAULT_CONFIG["kafka_client"](**configs))
                return clients[-1]

            attempt_s = max(1.0, min(_ATTEMPT_S, deadline - time.monotonic()))
            try:
                return KafkaAdminClient(**client_options(kafka), kafka_client=keep,
                                        bootstrap_timeout_ms=int(attempt_s * 1000),
                                        request_timeout_ms=int(min(timeout_s, 15.0) * 1000))
            except KafkaError as exc:
                for client in clients:
                    client.close()
                refused = _refusal(kafka, errors)
                if refused or time.monotonic() >= deadline:
                    raise ClusterAccessError(refused or _unreachable(kafka, errors, exc, timeout_s)) from None


@contextmanager
def _connection_errors():
    """The exceptions kafka-python logs while it connects.

    kafka-python 3.0.x retries a refused password or an untrusted certificate until its
    bootstrap timeout and then raises only "Unable to bootstrap"; the cause is in the
    exception each retry logs. This keeps those exceptions, and keeps kafka-python's lines
    out of the worker's log meanwhile, so a failure is one line of ours. If a kafka-python
    upgrade stops logging the exception, the wrong-password and untrusted-certificate tests
    of ``tests/integration/test_secure_kafka.py`` fail. (The refused password's answer
    itself needs the transport workaround in :mod:`worker.runtime.clients`.)
    """
    errors: list[BaseException] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            args = record.args if isinstance(record.args, tuple) else ()
            errors.extend(arg for arg in args if isinstance(arg, BaseException))

    logger = logging.getLogger("kafka")
    handler, level, propagate = Keep(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    if not level or level > logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield errors
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        logger.setLevel(level)


def _refusal(kafka: KafkaConfig, errors: list[BaseException]) -> str | None:
    """What no retry will change: the broker refused the password, or its certificate is
    not signed by a CA the worker trusts."""
    servers = kafka.bootstrap_servers
    for exc in reversed(errors):
        if isinstance(exc, SaslAuthenticationFailedError):
            return (f"Kafka authentication failed for user '{kafka.sasl_username}' "
                    f"({kafka.sasl_mechanism}) at {servers}: {_reason(exc)}; check "
                    f"kafka.sasl_username and kafka.sasl_password")
    for exc in reversed(errors):
        untrusted = _untrusted_certificate(exc)
        if untrusted:
            return (f"the broker's certificate at {servers} is not trusted by kafka.ssl_cafile "
                    f"({kafka.ssl_cafile or 'unset: the system CAs'}): {untrusted}")
    return None


def _unreachable(kafka: KafkaConfig, errors: list[BaseException], final: BaseException,
                 timeout_s: float) -> str:
    causes = [e for e in errors if not isinstance(e, KafkaTimeoutError)]  # not "Unable to bootstrap"
    last = _reason(causes[-1]) if causes else _reason(final)
    return (f"cannot connect to Kafka at {kafka.bootstrap_servers} ({kafka.security_protocol}) "
            f"within {timeout_s:g} s: {last}")


def _reason(exc: BaseException) -> str:
    """The broker's or the socket's own words, without kafka-python's error-code prefix."""
    text = str(exc.args[-1]) if exc.args else str(exc)
    return text.split(": ", 1)[1] if text.startswith(type(exc).__name__ + ": ") else text


def _untrusted_certificate(exc: BaseException | None) -> str | None:
    """The verification failure, when ``exc`` (or what it wraps) is one."""
    while exc is not None:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return exc.verify_message or str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return str(exc).split("certificate verify failed: ", 1)[-1].split(" (_ssl.c", 1)[0]
        exc = exc.__cause__ or exc.__context__
    return None


def _missing_on_topics(admin: KafkaAdminClient, grants: list[Grant]) -> list[Grant]:
    """Grants the broker's authorized operations (KIP-430) show to be missing. A topic that
    does not exist yet is not checked: the worker waits for it, as without ACLs."""
    described = {t["name"]: t for t in admin.describe_topics(sorted({g.name for g in grants}))}
    for name, topic in described.items():
        if topic.get("error_code") == _UNKNOWN_TOPIC:
            log.warning("topic %s does not exist (yet); the worker waits for it", name)
    missing = []
    for grant in grants:
        topic = described.get(grant.name, {})
        if topic.get("error_code") == _TOPIC_AUTHORIZATION_FAILED:
            missing.append(grant)
        elif topic.get("error_code") == 0 and topic.get("authorized_operations") is not None \
                and grant.operation not in topic["authorized_operations"]:
            missing.append(grant)
    return missing


def _group_allowed(admin: KafkaAdminClient, group_id: str, deadline: float) -> bool:
    """False when the group is refused (no DESCRIBE), or exists and shows no READ. A new
    group shows no operations: its READ is checked with the offsets of a transaction."""
    while True:
        try:
            group = admin.describe_groups([group_id], include_authorized_operations=True)[group_id]
        except GroupAuthorizationFailedError:
            return False
        except _COORDINATOR_WAIT:  # the offsets topic is being created: a fresh cluster
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
            continue
        operations = group.get("authorized_operations")
        return operations is None or "READ" in operations


def _missing_for_transactions(kafka: KafkaConfig, worker_id: str, grants: list[Grant]) -> list[Grant]:
    """Start and abort an empty transaction with this worker's own transactional id, as
    its delivery will: InitProducerId needs WRITE on the id, AddOffsetsToTxn READ on the
    group. The real producer fences this one at once."""
    by_resource = {g.resource: g for g in grants}
    producer = build_producer(kafka, transactional_id(kafka, worker_id))
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send_offsets_to_transaction({}, kafka.group_id)
        producer.abort_transaction()
    except TransactionalIdAuthorizationFailedError:
        return [by_resource["transactional-id"]]
    except GroupAuthorizationFailedError:
        return [by_resource["group"]]
    finally:
        producer.close(timeout=0)
    return []
