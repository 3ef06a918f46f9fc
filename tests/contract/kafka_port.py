"""What the runner relies on from kafka-python, as one suite for the fakes and the real broker.

``KafkaPortContract`` is a mixin (like ThreatExchange's ``SignalTypeAutoTest``): a test class
that inherits it and provides a ``port`` fixture (a :class:`KafkaPort`) runs every test
below on that side. ``test_kafka_port.py`` runs it on ``worker.testing.fakes`` and on a real
broker, so that a fake that drifts from kafka-python fails here rather than letting the
runner's unit tests pass against behaviour Kafka does not have.

The suite drives the clients the way the runner and ``worker.runtime.delivery`` do:
subscribe, poll, pause and resume, seek, commit; transactions that carry the consumer's
group metadata; fencing by transactional id.
"""
from __future__ import annotations

import time
from typing import Any, Protocol

import pytest
from kafka.errors import (CommitFailedError, IllegalStateError, InvalidProducerEpochError, KafkaError,
                          ProducerFencedError)
from kafka.structs import OffsetAndMetadata

from worker.runtime.delivery import AtLeastOnce, ExactlyOnce, Fenced, NotAMember

WAIT_S = 30.0  # the bound on every wait for the real broker; the fakes answer at once


class KafkaPort(Protocol):
    """One side of the contract: fresh topics (one partition each) and a group per test."""

    input: str
    verdicts: str
    dead_letters: str
    group: str

    def producer(self, transactional_id: str | None = None) -> Any:
        """A producer as the worker builds it; a transactional one is not initialised yet."""

    def consumer(self, topic: str, group: str, max_poll_interval_ms: int | None = None) -> Any:
        """A subscribed group member that holds its assignment, at the group's committed
        offset (or the start). ``max_poll_interval_ms``: how long the real broker's group keeps
        a member that stops polling (the fake drops a member only in ``take_over``)."""

    def take_over(self, member: Any) -> Any:
        """The group moves on without ``member`` (which stopped polling): a new member joins,
        in a newer generation, and gets the partitions. Returns the new member."""

    def append(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        """An input record, written outside any transaction, as an upload service would."""

    def read_committed(self, topic: str) -> list[tuple[bytes | None, bytes | None]]:
        """(key, value) of every record a read_committed reader sees, once every transaction
        so far has ended."""

    def committed(self, group: str, topic: str) -> int | None:
        """The group's committed offset of the topic's partition, None if it has none."""


def poll_records(consumer: Any, count: int, timeout_s: float = WAIT_S) -> list[Any]:
    """Poll until ``count`` records came: the real consumer fetches in the background."""
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200, max_records=count - len(records)).values():
            records.extend(batch)
    return records


def poll_quietly(consumer: Any, polls: int = 5) -> list[Any]:
    """Whatever a few polls return (a second on the real broker): for what must not come."""
    return [r for _ in range(polls) for batch in consumer.poll(timeout_ms=200).values() for r in batch]


def transact(producer: Any, records: list[tuple[str, bytes | None, bytes | None]], tp: Any,
             next_offset: int, group_metadata: Any) -> None:
    """One transaction, step by step as ``ExactlyOnce.deliver`` runs it."""
    producer.begin_transaction()
    acks = [producer.send(topic, key=key, value=value) for topic, key, value in records]
    for ack in acks:
        ack.get(timeout=WAIT_S)
    producer.send_offsets_to_transaction({tp: OffsetAndMetadata(next_offset, "", -1)}, group_metadata)
    producer.commit_transaction()


def offsets(records: list[Any]) -> list[int]:
    return [r.offset for r in records]


class KafkaPortContract:
    """The suite; a subclass provides the ``port`` fixture."""

    # --- records ----------------------------------------------------------------------

    def test_a_consumed_record_carries_its_create_time_in_milliseconds(self, port):
        """The latency clock (:mod:`worker.runtime.clocks`) reads ``timestamp`` and
        ``timestamp_type``: CreateTime (0), stamped when the record was produced."""
        before = time.time()
        port.append(port.input, b"vid-a", b"upload")
        after = time.time()
        member = port.consumer(port.input, port.group)
        [record] = poll_records(member, 1)
        assert record.timestamp_type == 0
        assert before - 1 <= record.timestamp / 1000 <= after + 1

    # --- transactions -----------------------------------------------------------------

    def test_a_committed_transaction_publishes_its_records_with_its_offset(self, port):
        """The exactly-once path: a read_committed reader sees the verdict and the dead
        letter, and the group resumes after the input they came from."""
        port.append(port.input, b"vid-a", b"upload")
        member = port.consumer(port.input, port.group)
        [tp] = member.assignment()
        producer = port.producer(f"{port.group}-tx")
        producer.init_transactions()
        transact(producer, [(port.verdicts, b"vid-a", b"verdict"), (port.dead_letters, b"vid-b", b"letter")],
                 tp, 1, member.group_metadata())
        assert port.read_committed(port.verdicts) == [(b"vid-a", b"verdict")]
        assert port.read_committed(port.dead_letters) == [(b"vid-b", b"letter")]
        assert port.committed(port.group, port.input) == 1

    def test_an_aborted_transaction_publishes_nothing_and_the_producer_goes_on(self, port):
        """ExactlyOnce aborts after an error and retries the event on the same producer."""
        member = port.consumer(port.input, port.group)
        [tp] = member.assignment()
        producer = port.producer(f"{port.group}-tx")
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(port.verdicts, key=b"vid-a", value=b"aborted").get(timeout=WAIT_S)
        producer.send_offsets_to_transaction({tp: OffsetAndMetadata(1, "", -1)}, member.group_metadata())
        producer.abort_transaction()
        producer.begin_transaction()
        producer.send(port.verdicts, key=b"vid-a", value=b"retried").get(timeout=WAIT_S)
        producer.commit_transaction()
        assert port.read_committed(port.verdicts) == [(b"vid-a", b"retried")]
        assert port.committed(port.group, port.input) is None

    @pytest.mark.parametrize("with_records", [True, False], ids=["records", "offsets-only"])
    def test_a_newer_producer_with_the_same_id_fences_the_older(self, port, with_records):
        """ExactlyOnce turns ProducerFencedError into Fenced and stops the zombie worker.

        begin_transaction is local on the real client: the first call that reaches the
        broker raises (a send's acknowledgement, or the offsets when there is no record).
        """
        member = port.consumer(port.input, port.group)
        [tp] = member.assignment()
        old = port.producer(f"{port.group}-tx")
        old.init_transactions()
        new = port.producer(f"{port.group}-tx")
        new.init_transactions()
        zombie = [(port.verdicts, b"vid-a", b"zombie")] if with_records else []
        with pytest.raises(ProducerFencedError):
            transact(old, zombie, tp, 1, member.group_metadata())
        # From here kafka-python wraps the fatal error in a plain KafkaError.
        with pytest.raises(KafkaError):
            old.commit_transaction()
        with pytest.raises(KafkaError):
            old.abort_transaction()
        transact(new, [(port.verdicts, b"vid-a", b"owner")], tp, 2, member.group_metadata())
        assert port.read_committed(port.verdicts) == [(b"vid-a", b"owner")]
        assert port.committed(port.group, port.input) == 2

    def test_a_producer_fenced_in_the_middle_of_a_transaction_cannot_commit_it(self, port):
        """The newer producer's init_transactions aborts the older one's open transaction.

        kafka-python reports this send as InvalidProducerEpochError, not ProducerFencedError
        (the partition is in the transaction already, so the produce request itself meets
        the new epoch); ExactlyOnce treats it as fencing (see the delivery tests below).
        """
        member = port.consumer(port.input, port.group)
        [tp] = member.assignment()
        old = port.producer(f"{port.group}-tx")
        old.init_transactions()
        old.begin_transaction()
        old.send(port.verdicts, key=b"vid-a", value=b"first").get(timeout=WAIT_S)
        new = port.producer(f"{port.group}-tx")
        new.init_transactions()
        with pytest.raises(InvalidProducerEpochError):
            old.send(port.verdicts, key=b"vid-a", value=b"second").get(timeout=WAIT_S)
        with pytest.raises(KafkaError):
            old.commit_transaction()
        transact(new, [(port.verdicts, b"vid-a", b"owner")], tp, 1, member.group_metadata())
        assert port.read_committed(port.verdicts) == [(b"vid-a", b"owner")]
        assert port.committed(port.group, port.input) == 1

    def test_a_transactional_producer_sends_only_inside_a_transaction(self, port):
        """A transactional send outside a transaction is refused at once, not buffered."""
        producer = port.producer(f"{port.group}-tx")
        producer.init_transactions()
        with pytest.raises(IllegalStateError):
            producer.send(port.verdicts, key=b"k", value=b"before")
        producer.begin_transaction()
        producer.send(port.verdicts, key=b"k", value=b"inside").get(timeout=WAIT_S)
        producer.commit_transaction()
        with pytest.raises(IllegalStateError):
            producer.send(port.verdicts, key=b"k", value=b"after")
        assert port.read_committed(port.verdicts) == [(b"k", b"inside")]

    def test_a_member_the_group_moved_on_without_cannot_commit(self, port):
        """KIP-447: offsets sent with a stale member's group metadata fail (an abortable
        error: the producer stays usable), and so does that member's own commit; the new
        owner's commit goes through."""
        stale = port.consumer(port.input, port.group, max_poll_interval_ms=1000)
        [tp] = stale.assignment()
        snapshot = stale.group_metadata()
        owner = port.take_over(stale)
        producer = port.producer(f"{port.group}-tx")
        producer.init_transactions()
        with pytest.raises(CommitFailedError):
            transact(producer, [(port.verdicts, b"vid-a", b"zombie")], tp, 1, snapshot)
        producer.abort_transaction()
        with pytest.raises(CommitFailedError):
            stale.commit({tp: OffsetAndMetadata(1, "", -1)})
        transact(producer, [(port.verdicts, b"vid-a", b"owner")], tp, 2, owner.group_metadata())
        assert port.read_committed(port.verdicts) == [(b"vid-a", b"owner")]
        assert port.committed(port.group, port.input) == 2

    def test_a_dropped_members_own_metadata_gets_past_the_broker(self, port):
        """Once dropped, a member's group_metadata() reads generation -1 and no member id, and
        the broker skips its generation check for such metadata: a transactional commit with
        it goes through although another member owns the partition. This is why ExactlyOnce
        refuses to deliver for a member that is not one (next tests)."""
        stale = port.consumer(port.input, port.group, max_poll_interval_ms=1000)
        [tp] = stale.assignment()
        port.take_over(stale)
        dropped = stale.group_metadata()
        assert (dropped.generation_id, dropped.member_id) == (-1, "")
        producer = port.producer(f"{port.group}-tx")
        producer.init_transactions()
        transact(producer, [(port.verdicts, b"vid-a", b"zombie")], tp, 1, dropped)
        assert port.committed(port.group, port.input) == 1

    # --- the consumer -----------------------------------------------------------------

    def test_poll_returns_the_records_of_assigned_partitions(self, port):
        """The runner buffers ``poll()``'s batches by partition, only for partitions in
        ``assignment()``, and hands ``group_metadata()`` to the delivery."""
        for i in range(3):
            port.append(port.input, f"k{i}".encode(), f"v{i}".encode())
        member = port.consumer(port.input, port.group)
        [tp] = member.assignment()
        assert (tp.topic, tp.partition) == (port.input, 0)
        assert member.partitions_for_topic(port.input) == {0}
        assert member.group_metadata().group_id == port.group
        records = []
        deadline = time.monotonic() + WAIT_S
        while len(records) < 3 and time.monotonic() < deadline:
            batch = member.poll(timeout_ms=200, max_records=3)
            assert set(batch) <= member.assignment()
            records.extend(r for rs in batch.values() for r in rs)
        assert [(r.topic, r.partition, r.offset, r.key, r.value) for r in records] == [
            (port.input, 0, i, f"k{i}".encode(), f"v{i}".encode()) for i in range(3)]

    def test_a_paused_partition_returns_nothing_until_resumed(self, port):
        """The runner pauses a partition with work in flight, part of a fetched batch still
        unread, and keeps polling; on resume the rest arrives (kafka-python 3.0.x needs the
        workaround in clients.build_consumer for that)."""
        for i in range(5):
            port.append(port.input, b"k", f"v{i}".encode())
        member = port.consumer(port.input, port.group)
        [tp] = member.assignment()
        assert offsets(poll_records(member, 2)) == [0, 1]
        member.pause(tp)
        assert poll_quietly(member) == []
        assert member.position(tp) == 2
        member.resume(tp)
        assert offsets(poll_records(member, 3)) == [2, 3, 4]

    def test_seek_rewinds_and_position_and_end_offsets_follow(self, port):
        """A revoked partition handed straight back is sought to its first undelivered
        record; lag is ``end_offsets - position``."""
        for i in range(4):
            port.append(port.input, b"k", f"v{i}".encode())
        member = port.consumer(port.input, port.group)
        [tp] = member.assignment()
        assert member.end_offsets([tp]) == {tp: 4}
        assert offsets(poll_records(member, 4)) == [0, 1, 2, 3]
        assert member.position(tp) == 4
        member.seek(tp, 1)
        assert member.position(tp) == 1
        assert offsets(poll_records(member, 3)) == [1, 2, 3]
        assert member.position(tp) == 4

    def test_the_next_member_starts_at_the_committed_offset(self, port):
        """At-least-once commits with ``consumer.commit``; a restarted worker resumes there."""
        for i in range(5):
            port.append(port.input, b"k", f"v{i}".encode())
        member = port.consumer(port.input, port.group)
        [tp] = member.assignment()
        assert offsets(poll_records(member, 5)) == [0, 1, 2, 3, 4]
        member.commit({tp: OffsetAndMetadata(3, "", -1)})
        assert port.committed(port.group, port.input) == 3
        member.close()
        restarted = port.consumer(port.input, port.group)
        assert offsets(poll_records(restarted, 2)) == [3, 4]

    def test_keys_and_values_keep_their_bytes_and_tombstones_survive(self, port):
        """A tombstone upload becomes a dead letter that cites its key; any bytes pass."""
        records = [(b"\x00\xff-key", bytes(range(256))), (b"deleted", None), (None, b"no key")]
        for key, value in records:
            port.append(port.input, key, value)
        member = port.consumer(port.input, port.group)
        assert [(r.key, r.value) for r in poll_records(member, 3)] == records
        producer = port.producer(f"{port.group}-tx")
        producer.init_transactions()
        producer.begin_transaction()
        for key, value in records:
            producer.send(port.verdicts, key=key, value=value).get(timeout=WAIT_S)
        producer.commit_transaction()
        assert port.read_committed(port.verdicts) == records
        with pytest.raises(ValueError):  # no key and no value: refused before it is sent
            port.producer().send(port.verdicts, key=None, value=None)

    # --- the delivery classes ---------------------------------------------------------

    def test_exactly_once_delivers_the_records_and_the_offset_together(self, port):
        member = port.consumer(port.input, port.group)
        [tp] = member.assignment()
        delivery = ExactlyOnce(lambda: port.producer(f"{port.group}-tx"), WAIT_S)
        delivery.start()
        delivery.deliver([(port.verdicts, b"vid-a", b"verdict"), (port.dead_letters, b"vid-b", b"letter")],
                         tp, 7, member.group_metadata())
        assert port.read_committed(port.verdicts) == [(b"vid-a", b"verdict")]
        assert port.read_committed(port.dead_letters) == [(b"vid-b", b"letter")]
        assert port.committed(port.group, port.input) == 7
        delivery.close(WAIT_S)

    def test_exactly_once_stops_an_instance_a_newer_one_fenced(self, port):
        """A restarted worker with the same id fences the old one, which raises Fenced and
        publishes nothing."""
        member = port.consumer(port.input, port.group)
        [tp] = member.assignment()
        old = ExactlyOnce(lambda: port.producer(f"{port.group}-tx"), WAIT_S)
        old.start()
        new = ExactlyOnce(lambda: port.producer(f"{port.group}-tx"), WAIT_S)
        new.start()
        with pytest.raises(Fenced):
            old.deliver([(port.verdicts, b"vid-a", b"zombie")], tp, 1, member.group_metadata())
        new.deliver([(port.verdicts, b"vid-a", b"owner")], tp, 1, member.group_metadata())
        assert port.read_committed(port.verdicts) == [(b"vid-a", b"owner")]
        assert port.committed(port.group, port.input) == 1
        new.close(WAIT_S)

    def test_exactly_once_commits_nothing_for_a_member_the_group_dropped(self, port):
        stale = port.consumer(port.input, port.group, max_poll_interval_ms=1000)
        [tp] = stale.assignment()
        port.take_over(stale)
        delivery = ExactlyOnce(lambda: port.producer(f"{port.group}-tx"), WAIT_S)
        delivery.start()
        with pytest.raises(NotAMember):
            delivery.deliver([(port.verdicts, b"vid-a", b"zombie")], tp, 1, stale.group_metadata())
        assert port.read_committed(port.verdicts) == []
        assert port.committed(port.group, port.input) is None
        delivery.close(WAIT_S)

    def test_exactly_once_stops_an_instance_fenced_in_the_middle_of_its_transaction(self, port):
        """The newer instance starts between two sends of the older one's transaction: the
        older raises Fenced (kafka-python says InvalidProducerEpochError there) and its
        records never show."""
        member = port.consumer(port.input, port.group)
        [tp] = member.assignment()
        txid = f"{port.group}-tx"

        class FencedAfterTheFirstSend:
            def __init__(self, producer):
                self.producer, self.sends = producer, 0

            def __getattr__(self, name):
                return getattr(self.producer, name)

            def send(self, *args, **kwargs):
                ack = self.producer.send(*args, **kwargs)
                self.sends += 1
                if self.sends == 1:
                    ack.get(timeout=WAIT_S)  # the partition is in the transaction now
                    port.producer(txid).init_transactions()
                return ack

        old = ExactlyOnce(lambda: FencedAfterTheFirstSend(port.producer(txid)), WAIT_S)
        old.start()
        with pytest.raises(Fenced):
            old.deliver([(port.verdicts, b"vid-a", b"first"), (port.verdicts, b"vid-a", b"second")],
                        tp, 1, member.group_metadata())
        assert port.read_committed(port.verdicts) == []
        assert port.committed(port.group, port.input) is None

    def test_at_least_once_publishes_then_commits(self, port):
        member = port.consumer(port.input, port.group)
        [tp] = member.assignment()
        delivery = AtLeastOnce(port.producer(), member.commit, WAIT_S)
        delivery.deliver([(port.verdicts, b"vid-a", b"verdict"), (port.dead_letters, b"vid-b", b"letter")],
                         tp, 4, member.group_metadata())
        assert port.read_committed(port.verdicts) == [(b"vid-a", b"verdict")]
        assert port.read_committed(port.dead_letters) == [(b"vid-b", b"letter")]
        assert port.committed(port.group, port.input) == 4
        delivery.close(WAIT_S)
