"""The Kafka clients as the worker builds them, against the real broker."""
from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaProducer
from kafka.admin import NewTopic

from worker.config import KafkaConfig
from worker.runtime.clients import build_admin, build_consumer

pytestmark = pytest.mark.kafka


def test_paused_then_resumed_partitions_deliver_every_record(kafka_broker):
    """Pause a partition while part of a fetched batch is unread, as the runner does while a
    video is in flight; after resuming, every record still arrives (kafka-python 3.0.x stalls
    here without the workaround in worker/runtime/clients.py)."""
    topic = f"pause-{uuid.uuid4().hex[:8]}"
    cfg = KafkaConfig(bootstrap_servers=kafka_broker.bootstrap_servers, upload_topic=topic,
                      group_id=f"g-{topic}", max_poll_records=8)
    admin = build_admin(cfg)
    admin.create_topics([NewTopic(topic, 2, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers)
    for i in range(40):
        producer.send(topic, f"event-{i}".encode(), partition=i % 2)
    producer.flush()
    producer.close()

    consumer = build_consumer(cfg)
    consumer.subscribe([topic])
    got = {0: [], 1: []}
    buffered = {0: [], 1: []}
    paused: set = set()
    deadline = time.monotonic() + 30
    try:
        while sum(map(len, got.values())) < 40 and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=200, max_records=8).items():
                buffered[tp.partition].extend(r.offset for r in records)
            for tp in consumer.assignment():  # "process" one record per partition a turn
                if buffered[tp.partition]:
                    got[tp.partition].append(buffered[tp.partition].pop(0))
            busy = {tp for tp in consumer.assignment() if buffered[tp.partition]}
            if busy - paused:
                consumer.pause(*(busy - paused))
            if paused - busy:
                consumer.resume(*(paused - busy))
            paused = busy
    finally:
        consumer.close()
    assert got == {0: list(range(20)), 1: list(range(20))}

