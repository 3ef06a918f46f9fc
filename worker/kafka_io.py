"""The one place that builds Kafka clients (kafka-python) from the config."""
from __future__ import annotations

from typing import Any, Iterable

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from .config import KafkaConfig


def _common(cfg: KafkaConfig) -> dict[str, Any]:
    options: dict[str, Any] = {"bootstrap_servers": cfg.bootstrap_servers.split(","),
                               "client_id": cfg.client_id,
                               "security_protocol": cfg.security_protocol}
    if cfg.sasl_mechanism:
        options.update(sasl_mechanism=cfg.sasl_mechanism, sasl_plain_username=cfg.sasl_username,
                       sasl_plain_password=cfg.sasl_password)
    if cfg.ssl_cafile:
        options["ssl_cafile"] = cfg.ssl_cafile
    return options


def build_consumer(cfg: KafkaConfig, topics: Iterable[str] | None = None) -> KafkaConsumer:
    """A group member with auto-commit off: the runner commits after the verdict is acknowledged."""
    return KafkaConsumer(
        *(topics or [cfg.upload_topic]),
        group_id=cfg.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=cfg.max_poll_records,
        max_poll_interval_ms=cfg.max_poll_interval_ms,
        session_timeout_ms=cfg.session_timeout_ms,
        fetch_max_bytes=max(cfg.max_event_bytes * cfg.max_poll_records, 1 << 20),
        **_common(cfg),
    )


def build_producer(cfg: KafkaConfig) -> KafkaProducer:
    return KafkaProducer(acks="all", enable_idempotence=True, linger_ms=5, retries=5,
                         **_common(cfg))


def build_admin(cfg: KafkaConfig) -> KafkaAdminClient:
    return KafkaAdminClient(**_common(cfg))


def ensure_topics(cfg: KafkaConfig, partitions: int = 1, replication: int = 1) -> None:
    """Create the upload, verdict and dead-letter topics if they are missing."""
    admin = build_admin(cfg)
    try:
        for name in (cfg.upload_topic, cfg.verdict_topic, cfg.dead_letter_topic):
            try:
                admin.create_topics([NewTopic(name, partitions, replication)])
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
