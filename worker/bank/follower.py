"""Every worker's copy of the hash bank: read the compacted topic from the start, then follow it.

Each worker reads all partitions itself (no consumer group), so an entry added anywhere is
in every worker's index within a poll interval, with no restart. Readiness waits for the
first full read ("bank loaded"), so a worker never answers with half a bank.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from kafka.structs import TopicPartition

from worker.bank.entries import BankEntry, parse_entry_record

log = logging.getLogger("worker.bank")


class BankFollower:
    def __init__(self, make_consumer: Callable[[], Any], topic: str,
                 apply: Callable[[BankEntry], None], remove: Callable[[str], None],
                 on_loaded: Callable[[], None], poll_timeout_ms: int = 500):
        self._make_consumer = make_consumer
        self.topic = topic
        self._apply = apply
        self._remove = remove
        self._on_loaded = on_loaded
        self.poll_timeout_ms = poll_timeout_ms
        self.loaded = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bank-follower", daemon=True)

    def start(self) -> "BankFollower":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception:
                log.exception("following the bank topic failed; starting over")
                self._stop.wait(2.0)

    def _follow(self) -> None:
        consumer = self._make_consumer()
        try:
            partitions = None
            waited = 0
            while not partitions and not self._stop.is_set():
                partitions = consumer.partitions_for_topic(self.topic)
                if not partitions:
                    if waited % 60 == 0:
                        log.warning("the bank topic %s does not exist (yet); waiting", self.topic)
                    waited += 1
                    self._stop.wait(0.5)
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions or ())]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps)
            started = time.monotonic()
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=self.poll_timeout_ms).values():
                    for record in records:
                        self._handle(record)
                if not self.loaded.is_set() and all(consumer.position(tp) >= ends[tp] for tp in tps):
                    self.loaded.set()
                    log.info("hash bank loaded in %.1f s", time.monotonic() - started)
                    self._on_loaded()
        finally:
            consumer.close()

    def _handle(self, record) -> None:
        try:
            entry = parse_entry_record(record.key, record.value)
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("skipping a bad bank record at %s/%s: %s", record.partition, record.offset, exc)
            return
        if isinstance(entry, str):
            self._remove(entry)
        else:
            self._apply(entry)
