"""The one place that builds Kafka clients (kafka-python) from the config."""
from __future__ import annotations

import logging
import time
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from worker.config import KafkaConfig

log = logging.getLogger("worker.runtime.clients")


def client_options(cfg: KafkaConfig) -> dict[str, Any]:
    options: dict[str, Any] = {"bootstrap_servers": cfg.bootstrap_servers.split(","),
                               "client_id": cfg.client_id,
                               "security_protocol": cfg.security_protocol}
    if cfg.sasl_mechanism:
        options.update(sasl_mechanism=cfg.sasl_mechanism, sasl_plain_username=cfg.sasl_username,
                       sasl_plain_password=cfg.sasl_password)
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password"):
        if getattr(cfg, key):
            options[key] = getattr(cfg, key)
    return options


def _keep_data_received_before_a_close() -> None:
    """Work around a kafka-python 3.0.x transport bug that drops the last bytes a broker sends
    before it closes the connection.

    When one read returns data and then the end of the stream, the transport aborts with
    "socket disconnected" and throws the data away. A broker that refuses a SASL password
    answers with the reason and closes the connection: the worker would see only the
    disconnect and never learn that its password was refused. Handing the data on first, and
    the end of the stream on the next read, keeps the answer.
    ``tests/integration/test_secure_kafka.py::test_every_connection_attempt_hears_why_the_password_was_refused``
    fails without it, so an upgrade that changes this behaviour is caught.
    """
    from kafka.net import transport

    for cls in (transport.KafkaTCPTransport, transport.KafkaSSLTransport):
        receive = cls.__dict__.get("_sock_recv")
        if receive is None or getattr(receive, "keeps_data", False):
            continue

        def sock_recv(self, receive=receive):
            pending = self.__dict__.pop("_end_after_data", None)
            if pending is not None:
                return b"", pending
            data, error = receive(self)
            if data and error is not None:
                self._end_after_data = error  # the socket stays readable: the next read ends it
                return data, None
            return data, error

        sock_recv.keeps_data = True
        cls._sock_recv = sock_recv


_keep_data_received_before_a_close()


def build_consumer(cfg: KafkaConfig) -> KafkaConsumer:
    """A group member with auto-commit off: offsets are committed with each result.

    It reads committed data only, so an upstream that publishes uploads in transactions
    never hands the worker an aborted event. The runner subscribes it.
    """
    static = {"group_instance_id": cfg.group_instance_id} if cfg.group_instance_id else {}
    consumer = KafkaConsumer(
        group_id=cfg.group_id,
        enable_auto_commit=False,
        isolation_level="read_committed",
        **static,
        auto_offset_reset="earliest",
        max_poll_records=cfg.max_poll_records,
        max_poll_interval_ms=cfg.max_poll_interval_ms,
        session_timeout_ms=cfg.session_timeout_ms,
        fetch_max_bytes=max(cfg.max_event_bytes * cfg.max_poll_records, 1 << 20),
        **client_options(cfg),
    )
    _unstick_parked_partitions(consumer)
    return consumer


def _unstick_parked_partitions(consumer: KafkaConsumer) -> None:
    """Work around a kafka-python 3.0.x fetcher bug that loses paused partitions for good.

    When a partition is paused with part of a fetched batch still unread, the fetcher parks
    that batch, and stops fetching the partition while it is parked. It restores the batch
    (on resume, or when a rebalance hands the partition back) only if its in-line slot is
    ``None``; but after any batch has been fully read, the slot holds an empty (falsy) batch
    object instead. The parked batch is then never restored and the partition never fetched
    again: the worker stalls on it. Clearing the empty slot before each poll lets the
    fetcher's own restore path run. ``tests/integration/test_clients.py`` reproduces the
    stall against the real broker, so an upgrade that changes this behaviour is caught.
    """
    poll = consumer.poll

    def poll_unstuck(*args, **kwargs):
        fetcher = getattr(consumer, "_fetcher", None)
        slot = getattr(fetcher, "_next_partition_records", None)
        if slot is not None and not slot:
            fetcher._next_partition_records = None
        return poll(*args, **kwargs)

    consumer.poll = poll_unstuck


def build_producer(cfg: KafkaConfig, transactional_id: str | None = None) -> KafkaProducer:
    options: dict[str, Any] = {}
    if transactional_id:
        # Short enough that a crashed worker's open transaction does not hold back
        # read_committed consumers for long; a restart with the same id aborts it at once.
        options.update(transactional_id=transactional_id, transaction_timeout_ms=60_000)
    producer = KafkaProducer(acks="all", enable_idempotence=True, linger_ms=5,
                             max_block_ms=int(cfg.publish_timeout_s * 1000), **options,
                             **client_options(cfg))
    if transactional_id:
        _retry_requests_to_a_dead_coordinator(producer)
    return producer


def _retry_requests_to_a_dead_coordinator(producer: KafkaProducer) -> None:
    """Work around a kafka-python 3.0.x sender bug that loses a transactional request when
    its coordinator's broker is down.

    When the connection to the coordinator fails, ``await_ready`` raises instead of returning
    False, and the sender's ``except`` branch looks the coordinator up again but never
    re-enqueues the request. A lost AddPartitionsToTxn stalls the transaction until
    ``send().get()`` times out (the next one too, while the lookup still names the dead
    broker); a lost EndTxn or AddOffsetsToTxn leaves ``commit_transaction()`` or
    ``send_offsets_to_transaction()``, which wait without a timeout, blocked for good.
    Returning False, after the retry backoff, takes the sender's other branch, which looks the
    coordinator up and retries the request, as the Java client does (and kafka-python's
    unreleased rewrite of the sender). ``tests/integration/test_cluster_faults.py`` kills the
    coordinator's broker, so an upgrade that changes this behaviour is caught.
    """
    sender = getattr(producer, "_sender", None)
    client = getattr(sender, "_client", None)
    if client is None or not hasattr(client, "await_ready"):
        return
    await_ready = client.await_ready
    backoff_s = sender.config.get("retry_backoff_ms", 100) / 1000

    def await_ready_or_false(node_id, timeout_ms=30000):
        try:
            return await_ready(node_id, timeout_ms=timeout_ms)
        except KafkaConnectionError as exc:
            log.debug("node %s not reachable; the sender looks up its coordinator again: %s",
                      node_id, exc)
            time.sleep(backoff_s)
            return False

    client.await_ready = await_ready_or_false


def transactional_id_prefix(cfg: KafkaConfig) -> str:
    """What every worker's transactional id starts with: the ACLs grant this prefix."""
    return f"{cfg.transactional_id_prefix or cfg.group_id}-"


def transactional_id(cfg: KafkaConfig, worker_id: str) -> str:
    """One per worker, stable across its restarts, so a restart fences its older self."""
    return transactional_id_prefix(cfg) + worker_id


def build_delivery(cfg: KafkaConfig, worker_id: str, commit, on_abort=lambda: None):
    """The configured delivery guarantee (see :mod:`worker.runtime.delivery`)."""
    from worker.runtime.delivery import AtLeastOnce, ExactlyOnce

    if cfg.delivery == "at_least_once":
        return AtLeastOnce(build_producer(cfg), commit, cfg.publish_timeout_s)
    return ExactlyOnce(lambda: build_producer(cfg, transactional_id(cfg, worker_id)),
                       cfg.publish_timeout_s, on_abort=on_abort)


def build_results_consumer(cfg: KafkaConfig, extra_topics: tuple[str, ...] = (), **options) -> KafkaConsumer:
    """A reader of the verdict and dead-letter topics (and ``extra_topics``) that sees
    committed results only."""
    return KafkaConsumer(cfg.verdict_topic, cfg.dead_letter_topic, *extra_topics, isolation_level="read_committed",
                         auto_offset_reset="earliest", enable_auto_commit=False,
                         **{**client_options(cfg), **options})


def build_admin(cfg: KafkaConfig) -> KafkaAdminClient:
    return KafkaAdminClient(**client_options(cfg))


def ensure_topics(cfg: KafkaConfig, partitions: int = 1, replication: int = 1,
                  bank_topic: str | None = None, extra_topics: tuple[str, ...] = ()) -> None:
    """Create the upload, verdict and dead-letter topics (and the compacted bank topic, and
    ``extra_topics``, e.g. the bank's confirmation and scoring topics) if they are missing."""
    names = (cfg.upload_topic, cfg.verdict_topic, cfg.dead_letter_topic, *filter(None, extra_topics))
    topics = [NewTopic(name, partitions, replication) for name in names]
    if bank_topic:
        topics.append(NewTopic(bank_topic, 1, replication, topic_configs={"cleanup.policy": "compact"}))
    admin = build_admin(cfg)
    try:
        for topic in topics:
            try:
                admin.create_topics([topic])
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def build_bank_consumer(cfg: KafkaConfig) -> KafkaConsumer:
    """A reader of the whole bank topic, outside any group: every worker reads all of it."""
    return KafkaConsumer(group_id=None, enable_auto_commit=False, isolation_level="read_committed",
                         auto_offset_reset="earliest", **client_options(cfg))
