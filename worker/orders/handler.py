"""Executing a legal order: the runner's side-topic port for ``orders.topic``.

One order record in; out, delivered in the transaction that commits its offset (so exactly
once through crashes and rebalances, :mod:`worker.runtime.delivery`):

- for each video target, a ``takedown`` verdict with reason ``legal_order`` and the order
  (verdict contract 1.3), keyed by the video id like any verdict;
- for each target, a positive hash-bank entry ``order:<order id>:<target id>``, fingerprinted
  from the fetched video (with the robustness hashes) or taken from the hash list, so that
  every worker catches every re-upload, and the re-upload's verdict names the entry;
- one order-status record: each target done or failed with its reason (a video that cannot
  be fetched or decoded fails with the upload's dead-letter reason), and the elapsed time
  against the deadline.

A target that fails does not fail the order: the others are executed and the status says
which failed. Only an order that is not one (bad JSON, the schema, a target id twice) is a
dead letter.
"""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

from worker.bank.confirmations import Fingerprinter
from worker.bank.entries import POSITIVE, BankEntry, entry_record
from worker.bank.fingerprint import VideoFingerprint
from worker.core import dead_letters
from worker.core.dead_letters import DeadLetter
from worker.core.events import (Applied, Record, SourcePosition, Verdict, output_id, utcnow,
                                verdict_record)
from worker.core.policy import TAKEDOWN
from worker.orders.records import (DONE, FAILED, INVALID_FINGERPRINT, LEGAL_ORDER, POLICY_VERSION,
                                   LegalOrder, Target, TargetOutcome, entry_id, order_status, parse_order,
                                   status_record, target_event)


class _TargetFailed(Exception):
    """A target that cannot be executed for a reason no upload has (a bad hash list)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


class OpenOrders:
    """The orders being executed now, for the metrics (read from the scrape thread)."""

    def __init__(self, now: Callable[[], datetime] = utcnow):
        self.now = now
        self._lock = threading.Lock()
        self._open: dict[int, LegalOrder] = {}
        self._next = 0

    def start(self, order: LegalOrder) -> int:
        with self._lock:
            self._next += 1
            self._open[self._next] = order
            return self._next

    def finish(self, token: int) -> None:
        with self._lock:
            self._open.pop(token, None)

    def count(self) -> int:
        with self._lock:
            return len(self._open)

    def oldest_seconds(self) -> float:
        now = self.now()
        with self._lock:
            return max(((now - o.received_at).total_seconds() for o in self._open.values()), default=0.0)

    def deadline_share(self) -> float:
        now = self.now()
        with self._lock:
            return max(((now - o.received_at) / max(o.deadline - o.received_at, timedelta(seconds=1))
                        for o in self._open.values()), default=0.0)


class OrderHandler:
    def __init__(self, topic: str, status_topic: str, verdict_topic: str, bank_topic: str,
                 fingerprinter: Fingerprinter, worker_id: str, default_hours: float = 3.0,
                 by_category: Mapping[str, float] | None = None, verdict_schema: str = "1.3",
                 max_event_bytes: int = 256 * 1024, now: Callable[[], datetime] = utcnow,
                 open_orders: OpenOrders | None = None, budget_s: float = 240.0):
        """``open_orders`` tracks the orders in execution, for the metrics. ``budget_s``: no
        target is started after this many seconds of one order (below the runner's
        ``worker.video_deadline_s``, which would dead-letter the whole order): the rest fail
        as ``timeout``, and the status still goes out."""
        self.topic = topic
        self.status_topic = status_topic
        self.verdict_topic = verdict_topic
        self.bank_topic = bank_topic
        self.fingerprinter = fingerprinter
        self.worker_id = worker_id
        self.default_hours = default_hours
        self.by_category = dict(by_category or {})
        self.verdict_schema = verdict_schema
        self.max_event_bytes = max_event_bytes
        self.now = now
        self.open_orders = open_orders or OpenOrders(now)
        self.budget_s = budget_s

    def handle_record(self, record: Any) -> Applied:
        order = parse_order(record.value, self.max_event_bytes, self.default_hours, self.by_category)
        token = self.open_orders.start(order)
        try:
            return self._execute(order, record)
        finally:
            self.open_orders.finish(token)

    def _execute(self, order: LegalOrder, record: Any) -> Applied:
        position = SourcePosition(record.topic, record.partition, record.offset)
        records: list[Record] = []
        outcomes = []
        begun = time.perf_counter()
        for target in order.targets:
            started = time.perf_counter()
            if started - begun > self.budget_s:
                outcomes.append(TargetOutcome(target.target_id, FAILED, dead_letters.TIMEOUT,
                                              f"not started within {self.budget_s:.0f} s of the order "
                                              "(worker.video_deadline_s): publish it again as a new order"))
                continue
            try:
                fingerprint = self._fingerprint(target)
            except (DeadLetter, _TargetFailed) as failure:
                outcomes.append(TargetOutcome(target.target_id, FAILED, failure.reason, failure.message))
                continue
            entry = BankEntry(entry_id=entry_id(order, target), bank=POSITIVE,
                              fingerprint_vpdq=fingerprint.to_vpdq_text(),
                              reason=f"{LEGAL_ORDER}: {order.order_id} ({order.legal_reference})"[:2000],
                              added_by=f"order:{order.authority_kind}:{order.authority_name}"[:256],
                              added_at=self.now(), source_video_id=target.video_id,
                              fingerprint=fingerprint.bank_side().to_json() if target.video_uri else None)
            verdict_id = None
            if target.video_id is not None:
                # derived from the order record and the target: a redelivered order rewrites it
                verdict_id = output_id(position, f"order-verdict/{target.target_id}")
                records.append((self.verdict_topic, *self._verdict(order, target, verdict_id,
                                                                   time.perf_counter() - started)))
            records.append((self.bank_topic, *entry_record(entry)))
            outcomes.append(TargetOutcome(target.target_id, DONE, verdict_id=verdict_id, entry_id=entry.entry_id))
        completed = self.now()
        records.append((self.status_topic, *status_record(order, outcomes, completed, position, self.worker_id)))
        return Applied({"kind": "legal order", "order_id": order.order_id, "status": order_status(outcomes),
                        "targets": len(outcomes), "failed": sum(o.status == FAILED for o in outcomes),
                        "elapsed_seconds": max(0.0, (completed - order.received_at).total_seconds()),
                        "within_deadline": completed <= order.deadline}, records)

    def _fingerprint(self, target: Target) -> VideoFingerprint:
        if target.video_uri is not None:
            fingerprint = self.fingerprinter.fingerprint(target.video_uri)
        else:
            try:
                fingerprint = VideoFingerprint.from_vpdq_text(target.fingerprint_vpdq or "")
            except ValueError as exc:
                raise _TargetFailed(INVALID_FINGERPRINT, f"the hash list is not vPDQ text: {exc}") from None
        if not fingerprint.frames:
            raise _TargetFailed(INVALID_FINGERPRINT, "the fingerprint has no frames")
        return fingerprint

    def _verdict(self, order: LegalOrder, target: Target, verdict_id: str,
                 seconds: float) -> tuple[bytes, bytes]:
        """``seconds``: fetching and fingerprinting the target (the verdict's processing)."""
        verdict = Verdict(event=target_event(order, target), decision=TAKEDOWN, reasons=(LEGAL_ORDER,),
                          video_score=None, tracks=(), frames_sampled=0, model=None,
                          policy_version=POLICY_VERSION, stage_seconds={"processing": seconds},
                          legal_order=order.reference())
        return verdict_record(verdict, self.worker_id, self.now(), None, order.received_at,
                              self.verdict_schema, verdict_id)
