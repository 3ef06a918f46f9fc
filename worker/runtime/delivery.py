"""The delivery guarantee: how an output record and its input offset reach Kafka together.

Exactly-once (the default) puts the verdict or dead-letter record and the input offset
commit in one Kafka transaction. Consumers of the output topics that read with
``isolation_level=read_committed`` see each input event's result exactly once, through
crashes, rebalances and broker restarts: an aborted or unfinished transaction is invisible
and its event is processed again. The offset commit carries the consumer's group metadata,
so a zombie worker whose partitions have moved on is fenced by the broker (KIP-447).

At-least-once is the option for brokers without transactions: publish, wait for the
acknowledgement, then commit the offset. A crash between the two gives a second copy of
the same result, with the same CloudEvents ``id`` (derived from the input), so consumers
can drop it.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Protocol, Sequence

from kafka.errors import InvalidProducerEpochError, ProducerFencedError
from kafka.structs import OffsetAndMetadata

from worker.core.events import Record

log = logging.getLogger("worker.runtime.delivery")


class Fenced(RuntimeError):
    """Another instance took over this worker's transactional id: this one must stop."""


class NotAMember(RuntimeError):
    """The consumer group dropped this worker: it must rejoin before it commits anything."""



class Delivery(Protocol):
    def start(self) -> None:
        """Get ready before the first event (a transactional producer fences older ones here)."""

    def deliver(self, records: Sequence[Record], tp: Any, next_offset: int,
                group_metadata: Any) -> None:
        """Publish one event's output records and commit its input up to ``next_offset``."""

    def close(self, timeout_s: float) -> None: ...


class AtLeastOnce:
    def __init__(self, producer: Any, commit: Callable[[dict], None], timeout_s: float):
        self.producer = producer
        self._commit = commit
        self.timeout_s = timeout_s

    def start(self) -> None:
        pass

    def deliver(self, records, tp, next_offset, group_metadata) -> None:
        acks = [self.producer.send(topic, key=key, value=value) for topic, key, value in records]
        for ack in acks:
            ack.get(timeout=self.timeout_s)
        self._commit({tp: OffsetAndMetadata(next_offset, "", -1)})

    def close(self, timeout_s: float) -> None:
        try:
            self.producer.flush(timeout=timeout_s)
        finally:
            self.producer.close(timeout=timeout_s)


class ExactlyOnce:
    """One transaction per event: its output records and the input offset, or none of them.

    ``make_producer`` builds a transactional producer; after an error the transaction is
    aborted, and if the producer is left unusable it is replaced, so that the caller can
    simply retry the same event.
    """

    def __init__(self, make_producer: Callable[[], Any], timeout_s: float,
                 on_abort: Callable[[], None] = lambda: None):
        self._make_producer = make_producer
        self.timeout_s = timeout_s
        self._on_abort = on_abort
        self.producer = None

    def start(self) -> None:
        self._ready_producer()

    def _ready_producer(self):
        if self.producer is None:
            producer = self._make_producer()
            try:
                producer.init_transactions()
            except Exception:
                producer.close(timeout=0)
                raise
            self.producer = producer
        return self.producer

    def deliver(self, records, tp, next_offset, group_metadata) -> None:
        # A member the group dropped (its poll loop stalled past max.poll.interval.ms) holds
        # generation -1 and no member id, and the broker skips its generation check for such
        # metadata: the offsets would commit while another member owns the partition. The
        # runner retries after its next poll, which rejoins and revokes (see
        # tests/contract/kafka_port.py).
        if group_metadata.generation_id < 0 or not group_metadata.member_id:
            raise NotAMember("the consumer is not a member of its group: not committing")
        producer = self._ready_producer()
        try:
            producer.begin_transaction()
            acks = [producer.send(topic, key=key, value=value) for topic, key, value in records]
            for ack in acks:
                ack.get(timeout=self.timeout_s)
            producer.send_offsets_to_transaction({tp: OffsetAndMetadata(next_offset, "", -1)},
                                                 group_metadata)
            producer.commit_transaction()
        except (ProducerFencedError, InvalidProducerEpochError) as exc:
            # fenced in the middle of a transaction, kafka-python reports the newer epoch
            self._discard_producer()
            raise Fenced(str(exc)) from exc
        except BaseException:
            self._abort()
            raise

    def _abort(self) -> None:
        self._on_abort()
        try:
            self.producer.abort_transaction()
        except Exception:
            log.warning("aborting the transaction failed; replacing the producer", exc_info=True)
            self._discard_producer()

    def _discard_producer(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception:
                log.debug("closing a failed producer", exc_info=True)

    def close(self, timeout_s: float) -> None:
        if self.producer is not None:
            self.producer.close(timeout=timeout_s)
            self.producer = None
