"""The Kafka port contract (``kafka_port.KafkaPortContract``) on the fakes and on a real broker."""
from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

import pytest
from kafka.admin import OffsetSpec
from kafka.protocol.consumer import IsolationLevel
from kafka.structs import TopicPartition

from worker.config import KafkaConfig, load_config
from worker.runtime.clients import (build_admin, build_consumer, build_producer, build_results_consumer,
                                    ensure_topics)
from worker.testing.fakes import FakeBroker, FakeConsumer, FakeProducer, FakeTopicPartition

from .kafka_port import WAIT_S, KafkaPortContract


def _names() -> dict[str, str]:
    run = uuid.uuid4().hex[:10]
    return {"input": f"contract-in-{run}", "verdicts": f"contract-verdicts-{run}",
            "dead_letters": f"contract-dead-letters-{run}", "group": f"contract-group-{run}"}


class FakeKafkaPort:
    """The suite's port on ``worker.testing.fakes``, built as the runner's unit tests build it."""

    def __init__(self):
        self.broker = FakeBroker()
        for name, value in _names().items():
            setattr(self, name, value)

    def producer(self, transactional_id: str | None = None) -> FakeProducer:
        return FakeProducer(self.broker, transactional_id)

    def consumer(self, topic: str, group: str, max_poll_interval_ms: int | None = None) -> FakeConsumer:
        consumer = FakeConsumer(self.broker, topic, group)
        consumer.subscribe([topic])
        return consumer

    def take_over(self, member: FakeConsumer) -> FakeConsumer:
        member.drop()  # as kafka-python's heartbeat thread does once the group drops it
        self.broker.rebalance(member.group_id)
        return self.consumer(member.topic, member.group_id)

    def append(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self.broker.append(topic, value, key)

    def read_committed(self, topic: str) -> list[tuple[bytes | None, bytes | None]]:
        return [(r.key, r.value) for r in self.broker.logs[topic]]

    def committed(self, group: str, topic: str) -> int | None:
        return self.broker.committed.get((group, FakeTopicPartition(topic, 0)))

    def close(self) -> None:
        pass


class RealKafkaPort:
    """The suite's port on a real broker, through the worker's own client builders.

    Every client it makes is closed at the end of the test; topics, group and transactional
    ids are new for each test, so tests share the session's broker without meeting.
    """

    def __init__(self, bootstrap_servers: str):
        for name, value in _names().items():
            setattr(self, name, value)
        self.kafka: KafkaConfig = load_config(env={}, overrides=[]).replace(kafka={
            "bootstrap_servers": bootstrap_servers, "group_id": self.group,
            "upload_topic": self.input, "verdict_topic": self.verdicts,
            "dead_letter_topic": self.dead_letters, "publish_timeout_s": WAIT_S}).kafka
        ensure_topics(self.kafka)
        self.admin = build_admin(self.kafka)
        self._clients: list[Any] = []
        self._seeder = None

    def _kafka(self, **changes: Any) -> KafkaConfig:
        return dataclasses.replace(self.kafka, **changes)

    def _track(self, client: Any) -> Any:
        self._clients.append(client)
        return client

    def producer(self, transactional_id: str | None = None):
        return self._track(build_producer(self.kafka, transactional_id=transactional_id))

    def consumer(self, topic: str, group: str, max_poll_interval_ms: int | None = None):
        changes = {"group_id": group}
        if max_poll_interval_ms is not None:
            changes["max_poll_interval_ms"] = max_poll_interval_ms
        consumer = self._track(build_consumer(self._kafka(**changes)))
        # kafka-python 3.0.12 can lose its assignment for good when it joins before it knows
        # the topic's partitions: the rejoin that follows, cut short by a poll timeout, is
        # never completed (assignment() stays empty). Knowing them first avoids that rejoin.
        # Not done in build_consumer: there, the all-topics metadata it fetches made long-lived
        # members lose their partitions mid-video (docs/delivery.md, "Limits").
        consumer.partitions_for_topic(topic)
        consumer.subscribe([topic])
        first: dict[Any, int] = {}
        deadline = time.monotonic() + WAIT_S
        while not consumer.assignment():
            assert time.monotonic() < deadline, f"no assignment in group {group} within {WAIT_S}s"
            for tp, records in consumer.poll(timeout_ms=100).items():
                first.setdefault(tp, records[0].offset)
        # The polls that joined the group may have fetched records: put them back, so the
        # member starts where the fake's does.
        for tp, offset in first.items():
            consumer.seek(tp, offset)
        return consumer

    def take_over(self, member):
        # The member stops polling; its heartbeat thread leaves the group once its
        # max_poll_interval_ms has passed, as a worker stuck between polls would.
        deadline = time.monotonic() + WAIT_S
        while member.group_metadata().generation_id >= 0:
            assert time.monotonic() < deadline, (
                f"the member did not leave within {WAIT_S}s (was it made with a short max_poll_interval_ms?)")
            time.sleep(0.1)
        [topic] = member.subscription()
        return self.consumer(topic, member.config["group_id"])

    def append(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        if self._seeder is None:
            self._seeder = self._track(build_producer(self.kafka))
        self._seeder.send(topic, key=key, value=value).get(timeout=WAIT_S)

    def _stable_end(self, tp: TopicPartition) -> int:
        """The partition's last stable offset, once no transaction is open on it: the high
        watermark first, so that a stable offset at or past it covers every record."""
        deadline = time.monotonic() + WAIT_S
        while True:
            high = self.admin.list_partition_offsets({tp: OffsetSpec.LATEST})[tp].offset
            stable = self.admin.list_partition_offsets(
                {tp: OffsetSpec.LATEST}, isolation_level=IsolationLevel.READ_COMMITTED)[tp].offset
            if stable >= high:
                return stable
            assert time.monotonic() < deadline, f"a transaction on {tp} stayed open for {WAIT_S}s"
            time.sleep(0.05)

    def read_committed(self, topic: str) -> list[tuple[bytes | None, bytes | None]]:
        tp = TopicPartition(topic, 0)
        end = self._stable_end(tp)
        reader = build_results_consumer(self._kafka(verdict_topic=topic, dead_letter_topic=topic))
        out: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + WAIT_S
        try:
            while not (reader.assignment() and reader.position(tp) >= end):
                assert time.monotonic() < deadline, f"could not read {topic} to {end} within {WAIT_S}s"
                for records in reader.poll(timeout_ms=200).values():
                    out.extend((r.key, r.value) for r in records)
        finally:
            reader.close()
        return out

    def committed(self, group: str, topic: str) -> int | None:
        # A read_committed member's lookup waits for offsets still pending in a transaction.
        reader = build_consumer(self._kafka(group_id=group))
        try:
            return reader.committed(TopicPartition(topic, 0), timeout_ms=int(WAIT_S * 1000))
        finally:
            reader.close()

    def close(self) -> None:
        for client in reversed(self._clients):
            try:
                client.close(**({"timeout": 1} if hasattr(client, "send") else {}))
            except Exception:  # a fenced producer or a left member: nothing more to release
                pass
        self.admin.close()


class TestFakeKafkaPort(KafkaPortContract):
    @pytest.fixture
    def port(self):
        yield FakeKafkaPort()


@pytest.mark.kafka
class TestRealKafkaPort(KafkaPortContract):
    @pytest.fixture
    def port(self, kafka_broker):
        port = RealKafkaPort(kafka_broker.bootstrap_servers)
        yield port
        port.close()
