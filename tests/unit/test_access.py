"""The ACLs a worker needs (worker/runtime/access.py), the commands docs/security.md lists
for them, and how a refused connection is named. The broker side is
tests/integration/test_secure_kafka.py."""
from __future__ import annotations

import ssl
from pathlib import Path

from kafka.errors import KafkaConnectionError, SaslAuthenticationFailedError

from worker.config import load_config
from worker.runtime.access import Grant, _refusal, principal_of, required_grants

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
DEPLOYED = ["bank.confirmation_topic=moderation.reviewer-confirmations.v1",
            "bank.densify_topic=moderation.bank-densify.v1", "bank.score_matches=true",
            "model.config=/models/detector.toml"]


def _config(*overrides: str):
    return load_config(env={}, overrides=["worker.id=w-1", *overrides])


def test_the_default_worker_needs_these_grants_and_nothing_else():
    assert [(g.operation, g.resource, g.name, g.prefixed) for g in required_grants(_config())] == [
        ("READ", "topic", "uploads.v1", False),
        ("WRITE", "topic", "verdicts.v1", False),
        ("WRITE", "topic", "uploads.v1.dead-letter", False),
        ("READ", "group", "deepfake-moderation", False),
        ("WRITE", "transactional-id", "deepfake-moderation-", True),
        ("READ", "topic", "moderation.hash-bank.v1", False),
        ("WRITE", "topic", "moderation.hash-bank.v1", False),
    ]


def test_grants_follow_the_config():
    def names(*overrides):
        return {(g.operation, g.name) for g in required_grants(_config(*overrides))}

    default = names()
    assert default - names("kafka.delivery=at_least_once") == {("WRITE", "deepfake-moderation-")}
    assert ("WRITE", "uploads-") in names("kafka.transactional_id_prefix=uploads")
    assert {n for _, n in default - names("bank.enabled=false")} == {"moderation.hash-bank.v1"}
    assert default - names("bank.add_takedowns=false") == {("WRITE", "moderation.hash-bank.v1")}
    # scoring matches needs a model; densifying needs takedowns to enter the bank
    assert names("bank.score_matches=true") == default
    assert names("bank.densify_topic=d", "bank.add_takedowns=false") == \
        default - {("WRITE", "moderation.hash-bank.v1")}
    assert names(*DEPLOYED) - default == {
        ("READ", "moderation.reviewer-confirmations.v1"), ("READ", "moderation.bank-densify.v1"),
        ("WRITE", "moderation.bank-densify.v1"), ("READ", "moderation.match-scoring.v1"),
        ("WRITE", "moderation.match-scoring.v1")}


def test_docs_list_the_same_kafka_acls_commands():
    doc = DOC.read_text()
    block = doc[doc.index("### Kafka ACLs"):doc.index("### When the cluster refuses the worker")]
    listed = [line for line in block.splitlines() if line.startswith("$ACLS ")]
    expected = [g.command("$P") for g in required_grants(_config(*DEPLOYED))]
    assert sorted(listed) == sorted(expected)
    assert all(str(g) in block for g in required_grants(_config(*DEPLOYED)))


def test_a_grant_as_an_acl_and_as_a_command():
    grant = Grant("WRITE", "transactional-id", "group-", prefixed=True)
    acl = grant.acl("User:w")
    assert (acl.principal, acl.host, acl.operation.name, acl.permission_type.name) == \
        ("User:w", "*", "WRITE", "ALLOW")
    assert (acl.resource_pattern.resource_type.name, acl.resource_pattern.resource_name,
            acl.resource_pattern.pattern_type.name) == ("TRANSACTIONAL_ID", "group-", "PREFIXED")
    assert grant.command("User:w", tool="kafka-acls.sh") == (
        "kafka-acls.sh --add --allow-principal User:w --operation Write "
        "--transactional-id group- --resource-pattern-type prefixed")
    assert str(grant) == "WRITE on transactional-id names starting with 'group-'"


def test_the_principal_named_in_errors():
    assert principal_of(_config().kafka) == "User:ANONYMOUS"
    assert principal_of(_config("kafka.security_protocol=SASL_SSL", "kafka.sasl_username=u").kafka) == "User:u"
    assert "kafka.ssl_certfile (/c.pem)" in principal_of(
        _config("kafka.security_protocol=SSL", "kafka.ssl_certfile=/c.pem").kafka)


def test_a_refused_password_or_certificate_is_told_apart_from_a_broker_that_is_down():
    kafka = _config("kafka.security_protocol=SASL_SSL", "kafka.sasl_mechanism=SCRAM-SHA-512",
                    "kafka.sasl_username=u", "kafka.ssl_cafile=/ca.crt").kafka
    down = KafkaConnectionError("111 ECONNREFUSED")
    assert _refusal(kafka, [down, down]) is None
    refused = SaslAuthenticationFailedError("SaslAuthenticationFailedError: invalid credentials")
    assert _refusal(kafka, [down, refused, down]) == (
        "Kafka authentication failed for user 'u' (SCRAM-SHA-512) at localhost:9092: invalid "
        "credentials; check kafka.sasl_username and kafka.sasl_password")
    try:
        try:
            raise ssl.SSLCertVerificationError(1, "certificate verify failed")
        except ssl.SSLError as exc:
            exc.verify_message = "unable to get local issuer certificate"
            raise KafkaConnectionError("Handshake failed: ...")
    except KafkaConnectionError as wrapped:
        untrusted = wrapped
    assert _refusal(kafka, [down, untrusted]) == (
        "the broker's certificate at localhost:9092 is not trusted by kafka.ssl_cafile "
        "(/ca.crt): unable to get local issuer certificate")
