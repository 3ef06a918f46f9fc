"""The worker on a secured broker: TLS from a CA made here, SCRAM-SHA-512 over SASL_SSL and
mTLS listeners, and ACLs enforced by KRaft's StandardAuthorizer, where each worker's
principal holds exactly :func:`worker.runtime.access.required_grants` and nothing else.

Round trips over SASL_SSL and over mTLS, a SIGKILL fault test over SASL_SSL, the bank
follower under the same ACLs, and the start-up errors: a wrong password, an untrusted broker
certificate and each missing ACL end start-up within seconds, in one line.
"""
from __future__ import annotations

import json
import signal
import time
import uuid
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from worker.config import Config
from worker.runtime.access import ClusterAccessError, Grant, check_access, required_grants
from worker.runtime.clients import build_producer, ensure_topics, transactional_id_prefix
from worker.testing.local_kafka import LocalKafka
from worker.testing.samples import sample_video
from worker.testing.tls import CertificateAuthority

from .conftest import read_outputs, running_worker
from .test_bank_kafka import wait_for_bank_entries
from .test_faults import WorkerProcess, publish_stream, tally
from .test_kafka_roundtrip import _event

pytestmark = pytest.mark.kafka

_SECURITY_KEYS = ("security_protocol", "sasl_mechanism", "sasl_username", "sasl_password",
                  "ssl_cafile", "ssl_certfile", "ssl_keyfile")


@pytest.fixture(scope="module")
def secure_broker():
    """One secured broker for this module. If it cannot start, these tests error out; they
    are never skipped."""
    broker = LocalKafka(secure=True).start()
    yield broker
    broker.stop()


@dataclass(frozen=True)
class Identity:
    """A principal, and the ``[kafka]`` keys that connect as it."""

    principal: str
    kafka: dict


def scram_user(broker: LocalKafka, name: str) -> Identity:
    """A new SCRAM-SHA-512 user, on the SASL_SSL listener."""
    return Identity(f"User:{name}", {
        "bootstrap_servers": broker.bootstrap_servers, "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": name,
        "sasl_password": broker.add_user(name), "ssl_cafile": str(broker.security.ca_file)})


def certificate_user(broker: LocalKafka, name: str) -> Identity:
    """A client certificate with common name ``name``, on the mTLS listener."""
    cert = broker.security.issue_client_cert(name)
    return Identity(f"User:{name}", {
        "bootstrap_servers": broker.ssl_bootstrap_servers, "security_protocol": "SSL",
        "ssl_cafile": str(cert.ca), "ssl_certfile": str(cert.cert), "ssl_keyfile": str(cert.key)})


def secured(broker: LocalKafka, base_config: Config, identity: Identity,
            leave_out=lambda grant, cfg: False, **sections) -> tuple[Config, Config]:
    """Unique topics and group for one test, created by the super user. Returns the worker's
    config, as ``identity`` with its :func:`required_grants` granted (less those
    ``leave_out`` picks), and the super user's, which publishes and reads the results."""
    run = uuid.uuid4().hex[:10]
    cfg = base_config.replace(
        kafka={"group_id": f"secure-group-{run}", "upload_topic": f"secure-uploads-{run}",
               "verdict_topic": f"secure-verdicts-{run}", "dead_letter_topic": f"secure-dead-{run}",
               "poll_timeout_ms": 200, **identity.kafka, **sections.pop("kafka", {})},
        bank={"topic": f"secure-bank-{run}", **sections.pop("bank", {})}, **sections)
    admin_options = broker.security.admin_options()
    admin = cfg.replace(kafka={"bootstrap_servers": broker.bootstrap_servers,
                               **{key: admin_options.get(key, "") for key in _SECURITY_KEYS},
                               "sasl_username": admin_options["sasl_plain_username"],
                               "sasl_password": admin_options["sasl_plain_password"]})
    ensure_topics(admin.kafka, bank_topic=cfg.bank.topic)
    broker.grant(g.acl(identity.principal) for g in required_grants(cfg) if not leave_out(g, cfg))
    return cfg, admin


def security_env(cfg: Config) -> dict[str, str]:
    """The worker's Kafka credentials as ``MODERATION_KAFKA_*`` variables."""
    return {f"MODERATION_KAFKA_{key.upper()}": str(getattr(cfg.kafka, key))
            for key in _SECURITY_KEYS if getattr(cfg.kafka, key)}


def publish_as(admin: Config, values: list[tuple[bytes, bytes]]) -> None:
    producer = build_producer(admin.kafka)
    try:
        for key, value in values:
            producer.send(admin.kafka.upload_topic, key=key, value=value).get(timeout=30)
    finally:
        producer.close()


EXPECTED_4 = {"events_in": 4, "verdicts": 3, "dead_letters": 1, "duplicates": 0, "missing": 0,
              "unknown": 0}


def test_round_trip_over_sasl_ssl_with_exactly_the_documented_acls(
        secure_broker, base_config, pipeline_without_model, capsys):
    cfg, admin = secured(secure_broker, base_config, scram_user(secure_broker, "sasl-worker"))
    inputs = publish_stream(admin, 4, bad_every=4)
    with running_worker(cfg, pipeline_without_model):
        outputs = read_outputs(admin, expected=len(inputs))
    assert tally("sasl-ssl-round-trip", inputs, outputs, capsys) == EXPECTED_4
    assert {topic for topic, _, _ in outputs} == {cfg.kafka.verdict_topic, cfg.kafka.dead_letter_topic}


def test_round_trip_over_mtls_as_the_client_certificates_principal(
        secure_broker, base_config, pipeline_without_model, capsys):
    cfg, admin = secured(secure_broker, base_config, certificate_user(secure_broker, "mtls-worker"))
    assert cfg.kafka.security_protocol == "SSL" and not cfg.kafka.sasl_username
    inputs = publish_stream(admin, 4, bad_every=4)
    with running_worker(cfg, pipeline_without_model):
        outputs = read_outputs(admin, expected=len(inputs))
    assert tally("mtls-round-trip", inputs, outputs, capsys) == EXPECTED_4


def test_sigkill_mid_stream_over_sasl_ssl_then_restart(secure_broker, base_config, tmp_path, capsys):
    cfg, admin = secured(secure_broker, base_config, scram_user(secure_broker, "killed-worker"))
    inputs = publish_stream(admin, 12, bad_every=4)
    worker = WorkerProcess(cfg, "secure-killed", tmp_path, static=True, **security_env(cfg)).start()
    try:
        progress = read_outputs(admin, expected=2, timeout_s=180, settle_s=0)
        assert len(progress) >= 2, worker.log.read_text()[-3000:]
        assert worker.alive(), worker.log.read_text()[-3000:]
        worker.kill()  # mid-stream: videos in flight, perhaps a transaction open
        committed = len(read_outputs(admin, expected=0, timeout_s=10, settle_s=0.5))
        worker.start()
        outputs = read_outputs(admin, expected=len(inputs), timeout_s=300, settle_s=4.0)
        assert worker.terminate() == 0
    finally:
        if worker.alive():
            worker.kill()
    figures = tally(f"sasl-ssl-sigkill committed-at-kill={committed}", inputs, outputs, capsys)
    assert committed < len(inputs)  # the kill landed mid-stream
    assert figures == {"events_in": 12, "verdicts": 9, "dead_letters": 3, "duplicates": 0,
                       "missing": 0, "unknown": 0}, worker.log.read_text()[-3000:]


def test_the_bank_follower_works_under_the_same_acls(
        secure_broker, base_config, pipeline_with_model, pipeline_without_model):
    """A takedown on one worker enters the bank; another, whose principal may only read
    the bank topic, follows it and catches the re-upload."""
    first, first_admin = secured(secure_broker, base_config, scram_user(secure_broker, "bank-writer"))
    second, second_admin = secured(
        secure_broker, base_config, scram_user(secure_broker, "bank-reader"),
        bank={"topic": first.bank.topic, "add_takedowns": False}, worker={"id": "second-worker"})
    # the second principal may read the bank topic, and nothing more of the bank
    assert [(g.operation, g.resource) for g in required_grants(second)
            if g.name == first.bank.topic] == [("READ", "topic")]

    clip = sample_video("carphone_pristine.mp4")
    registry = CollectorRegistry()
    with (running_worker(second, pipeline_without_model, registry=registry),
          running_worker(first, pipeline_with_model)):
        publish_as(first_admin, [_event("original", clip)])
        [(_, _, original)] = read_outputs(first_admin, expected=1, settle_s=0)
        assert original["data"]["decision"] == "takedown"
        wait_for_bank_entries(registry, 1)
        publish_as(second_admin, [_event("reupload", clip)])
        [(_, _, caught)] = read_outputs(second_admin, expected=1, settle_s=0)
    assert (caught["data"]["decision"], caught["data"]["reasons"]) == ("takedown", ["known_content_match"])
    assert caught["data"]["known_content"]["source_video_id"] == "original"


def _start_up_failure(cfg: Config, tmp_path, **env: str) -> tuple[float, list[dict], str]:
    """``python -m worker run`` until it exits; its time, its JSON log lines, its whole log."""
    worker = WorkerProcess(cfg, "refused-worker", tmp_path, **{**security_env(cfg), **env})
    started = time.monotonic()
    worker.start()
    try:
        code = worker.proc.wait(timeout=90)
    finally:
        if worker.alive():
            worker.proc.send_signal(signal.SIGKILL)
            worker.proc.wait()
    elapsed = time.monotonic() - started
    log = worker.log.read_text()
    lines = []
    for line in log.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    assert code == ClusterAccessError.exit_code, log[-3000:]
    return elapsed, lines, log


def _one_problem(lines: list[dict], log: str) -> str:
    problems = [line for line in lines if line["level"] in ("error", "critical")]
    assert len(problems) == 1, log[-3000:]
    assert "Traceback" not in log and not any("exception" in line for line in lines), log[-3000:]
    return problems[0]["message"]


def test_a_wrong_password_ends_start_up_in_one_line(secure_broker, base_config, tmp_path):
    cfg, _ = secured(secure_broker, base_config, scram_user(secure_broker, "forgetful-worker"))
    elapsed, lines, log = _start_up_failure(cfg, tmp_path, MODERATION_KAFKA_SASL_PASSWORD="not-the-password")
    assert elapsed < 60
    message = _one_problem(lines, log)
    assert message.startswith("cannot start: Kafka authentication failed for user 'forgetful-worker' "
                              f"(SCRAM-SHA-512) at {secure_broker.bootstrap_servers}: "), message
    assert "invalid credentials" in message and "not-the-password" not in log


def test_an_untrusted_broker_certificate_ends_start_up_in_one_line(secure_broker, base_config, tmp_path):
    cfg, _ = secured(secure_broker, base_config, scram_user(secure_broker, "trusting-worker"))
    elsewhere = CertificateAuthority(tmp_path / "elsewhere", "elsewhere")  # never signed the broker's
    elapsed, lines, log = _start_up_failure(cfg, tmp_path, MODERATION_KAFKA_SSL_CAFILE=str(elsewhere.cert_path))
    assert elapsed < 60
    assert _one_problem(lines, log) == (
        f"cannot start: the broker's certificate at {secure_broker.bootstrap_servers} is not "
        f"trusted by kafka.ssl_cafile ({elsewhere.cert_path}): self-signed certificate in "
        f"certificate chain")


def test_a_missing_acl_ends_start_up_in_one_line(secure_broker, base_config, tmp_path):
    cfg, _ = secured(secure_broker, base_config, scram_user(secure_broker, "groupless-worker"),
                     leave_out=lambda grant, _: grant.resource == "group")
    elapsed, lines, log = _start_up_failure(cfg, tmp_path)
    assert elapsed < 60
    assert _one_problem(lines, log) == (
        f"cannot start: not authorized: the worker's principal (User:groupless-worker) lacks "
        f"READ on group '{cfg.kafka.group_id}'; grant them as docs/security.md ('Kafka ACLs') shows")


@pytest.mark.parametrize("resource, operation, name_of, describe_only", [
    ("topic", "READ", lambda cfg: cfg.kafka.upload_topic, False),
    ("topic", "WRITE", lambda cfg: cfg.kafka.verdict_topic, False),
    ("topic", "READ", lambda cfg: cfg.bank.topic, False),  # the bank follower's
    ("transactional-id", "WRITE", lambda cfg: transactional_id_prefix(cfg.kafka), False),
    ("group", "READ", lambda cfg: cfg.kafka.group_id, True),  # DESCRIBE alone: found, not joined
], ids=["upload-read", "verdict-write", "bank-read", "transactional-id-write", "group-describe-only"])
def test_each_missing_acl_is_named(secure_broker, base_config, resource, operation, name_of,
                                   describe_only):
    identity = scram_user(secure_broker, f"partial-{uuid.uuid4().hex[:8]}")

    def left_out(grant: Grant, cfg: Config) -> bool:
        return (grant.resource, grant.operation, grant.name) == (resource, operation, name_of(cfg))

    cfg, _ = secured(secure_broker, base_config, identity, leave_out=left_out)
    [missing] = [g for g in required_grants(cfg) if left_out(g, cfg)]
    if describe_only:
        secure_broker.grant([Grant("DESCRIBE", resource, missing.name).acl(identity.principal)])
    started = time.monotonic()
    with pytest.raises(ClusterAccessError) as refused:
        check_access(cfg)
    assert time.monotonic() - started < 30
    assert str(refused.value) == (
        f"not authorized: the worker's principal ({identity.principal}) lacks {missing}; "
        f"grant them as docs/security.md ('Kafka ACLs') shows")


def test_every_connection_attempt_hears_why_the_password_was_refused(secure_broker, base_config):
    """The broker answers a refused password and closes the connection at once; without the
    workaround in worker/runtime/clients.py, kafka-python drops that answer and most attempts
    end in a bare "socket disconnected"."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError, SaslAuthenticationFailedError

    from worker.runtime.access import _connection_errors
    from worker.runtime.clients import client_options

    cfg, _ = secured(secure_broker, base_config, scram_user(secure_broker, "mistyped-worker"),
                     kafka={"sasl_password": "mistyped"})
    with _connection_errors() as errors:
        with pytest.raises(KafkaError):
            KafkaAdminClient(**client_options(cfg.kafka), bootstrap_timeout_ms=3000)
    attempts = [e for e in errors if isinstance(e, SaslAuthenticationFailedError)]
    assert len(attempts) >= 2
    assert not [e for e in errors if "socket disconnected" in str(e)], errors
