"""Fault tests against a three-node Kafka cluster (replication factor 3, min.insync.replicas
2): a broker killed with SIGKILL mid-stream, and the worker's transactional producer losing
its transaction coordinator. Every input event still ends as exactly one committed verdict or
dead-letter record, read with isolation_level=read_committed."""
from __future__ import annotations

import threading
import time

import pytest

from worker.runtime.clients import build_admin, build_producer, ensure_topics
from worker.testing.local_kafka import LocalKafkaCluster

from .conftest import read_outputs
from .test_faults import WorkerProcess, publish_stream, stream_through_fault, tally

pytestmark = pytest.mark.kafka


def cluster_config(base_config, cluster: LocalKafkaCluster, name: str):
    """Topics named after the test, created with every partition on all three nodes."""
    cfg = base_config.replace(kafka={
        "bootstrap_servers": cluster.bootstrap_servers, "group_id": f"{name}-group",
        "upload_topic": f"{name}-uploads", "verdict_topic": f"{name}-verdicts",
        "dead_letter_topic": f"{name}-dead"})
    ensure_topics(cfg.kafka, replication=3, bank_topic=cfg.bank.topic)
    return cfg


def partition_leaders(cfg, topics: list[str]) -> dict[str, int]:
    """The leader of partition 0 of each of ``topics`` that exists."""
    admin = build_admin(cfg.kafka)
    try:
        return {t["name"]: t["partitions"][0]["leader_id"]
                for t in admin.describe_topics(topics) if t["partitions"]}
    finally:
        admin.close()


def test_broker_killed_mid_stream(base_config, tmp_path, capsys):
    cluster = LocalKafkaCluster(size=3, replication=3, min_isr=2).start()
    try:
        cfg = cluster_config(base_config, cluster, "killed")
        inputs = publish_stream(cfg, 15)

        def kill_the_upload_leader():
            leaders = partition_leaders(cfg, [cfg.kafka.upload_topic, cfg.kafka.verdict_topic,
                                              cfg.kafka.dead_letter_topic, "__transaction_state",
                                              "__consumer_offsets"])
            victim = leaders[cfg.kafka.upload_topic]
            with capsys.disabled():
                print(f"\npartition leaders: {leaders}; killing broker {victim}")
            cluster.kill(victim)

        outputs = stream_through_fault(cfg, inputs, WorkerProcess(cfg, "cluster-worker", tmp_path),
                                       kill_the_upload_leader)
    finally:
        cluster.stop()
    figures = tally("cluster-broker-killed", inputs, outputs, capsys)
    assert figures == {"events_in": 15, "verdicts": 12, "dead_letters": 3, "duplicates": 0,
                       "missing": 0, "unknown": 0}


def within(timeout_s: float, call) -> None:
    """``call()`` on a daemon thread: kafka-python's commit_transaction has no timeout."""
    done, failure = threading.Event(), []

    def run():
        try:
            call()
        except BaseException as exc:  # re-raised below
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(timeout_s), f"{call.__name__} still blocked after {timeout_s}s"
    if failure:
        raise failure[0]


def test_transaction_coordinator_killed(base_config, capsys):
    """The worker's transactional producer commits a transaction whose coordinator's broker
    is SIGKILLed between send and commit, and then the next one (see
    ``kafka_io._retry_requests_to_a_dead_coordinator``: without it the commit never returns)."""
    cluster = LocalKafkaCluster(size=3, replication=3, min_isr=2).start()
    try:
        cfg = cluster_config(base_config, cluster, "coordinator")
        topic = cfg.kafka.verdict_topic
        producer = build_producer(cfg.kafka, transactional_id="coordinator-test")
        try:
            producer.init_transactions()
            producer.begin_transaction()
            producer.send(topic, value=b'{"n": 1}').get(timeout=30)
            coordinator = partition_leaders(cfg, ["__transaction_state"])["__transaction_state"]
            cluster.kill(coordinator)
            started = time.monotonic()
            within(60, producer.commit_transaction)
            producer.begin_transaction()
            producer.send(topic, value=b'{"n": 2}').get(timeout=30)
            within(60, producer.commit_transaction)
            elapsed = time.monotonic() - started
        finally:
            producer.close(timeout=0)
        committed = [record["n"] for _, _, record in
                     read_outputs(cfg, expected=2, timeout_s=30, settle_s=1.0)]
    finally:
        cluster.stop()
    with capsys.disabled():
        print(f"\n[coordinator-killed] broker {coordinator} killed; both transactions committed "
              f"{elapsed:.1f}s later; read_committed sees {committed}")
    assert committed == [1, 2]
