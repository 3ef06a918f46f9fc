"""Legal orders and what executing one writes: pure, so that every rule is tested on values.

An order (``schemas/v1.3/legal-order``) names its authority, its legal reference, when the
platform received it and its targets: videos (a video id and the URI to fetch it from) and
hash lists (vPDQ text). Its deadline is the order's own, or ``received_at`` plus the hours of
its category (``orders.deadline_hours``, 3 h; ``orders.category_deadline_hours``, e.g.
``ncii=2``). For each target the worker writes a takedown verdict with reason
``legal_order`` (video targets) and a positive hash-bank entry, then one order-status record
(``schemas/v1.3/order-status``) that says what became of every target.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping

from worker.core import dead_letters
from worker.core.dead_letters import DeadLetter
from worker.core.events import (SourcePosition, UploadEvent, checked_document, checked_json, envelope,
                                format_time, output_id, parse_time, round_score, validator,
                                worker_source)

ORDER_TYPE = "dev.moderation.legal-order.v1"
ORDER_STATUS_TYPE = "dev.moderation.order-status.v1"
_ORDER_TYPE_PREFIX = "dev.moderation.legal-order."
LEGAL_ORDER = "legal_order"              # the takedown verdict's reason code
POLICY_VERSION = "legal-order-v1"        # the verdict's policy version: an order, not thresholds
INVALID_FINGERPRINT = "invalid_fingerprint"  # a hash-list target that is not vPDQ text
DONE, PARTIAL, FAILED = "done", "partial", "failed"


@dataclass(frozen=True)
class Target:
    target_id: str
    video_id: str | None = None
    video_uri: str | None = None
    fingerprint_vpdq: str | None = None


@dataclass(frozen=True)
class LegalOrder:
    event_id: str
    source: str
    order_id: str
    authority_kind: str
    authority_name: str
    legal_reference: str
    category: str | None
    received_at: datetime
    deadline: datetime
    targets: tuple[Target, ...]

    def reference(self) -> dict[str, Any]:
        """What a takedown verdict says of the order it executes."""
        return {"order_id": self.order_id,
                "authority": {"kind": self.authority_kind, "name": self.authority_name},
                "legal_reference": self.legal_reference, "deadline": format_time(self.deadline)}


def deadline_hours(default_hours: float, by_category: Mapping[str, float], category: str | None) -> float:
    return by_category.get(category, default_hours) if category else default_hours


def parse_category_hours(entries: tuple[str, ...]) -> dict[str, float]:
    """``("ncii=2", ...)`` -> ``{"ncii": 2.0}``; ValueError for a bad entry."""
    hours = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep or not name.strip() or float(value) <= 0:
            raise ValueError(f"{entry!r} is not category=hours with hours above 0")
        hours[name.strip()] = float(value)
    return hours


def parse_order(value: bytes | None, max_bytes: int, default_hours: float = 3.0,
                by_category: Mapping[str, float] | None = None) -> LegalOrder:
    """A valid order, or :class:`DeadLetter` with the reason it is not one."""
    document = checked_document(value, max_bytes, "legal-order", _ORDER_TYPE_PREFIX, ORDER_TYPE,
                                ("received_at",))
    data = document["data"]
    received_at = parse_time(data["received_at"])
    if "deadline" in data:
        try:
            deadline = parse_time(data["deadline"])
        except ValueError as exc:
            raise DeadLetter(dead_letters.SCHEMA_VIOLATION, f"data/deadline: {exc}") from None
    else:
        hours = deadline_hours(default_hours, by_category or {}, data.get("category"))
        deadline = received_at + timedelta(hours=hours)
    targets = tuple(Target(t["target_id"], t.get("video_id"), t.get("video_uri"), t.get("fingerprint_vpdq"))
                    for t in data["targets"])
    ids = [t.target_id for t in targets]
    if len(set(ids)) != len(ids):
        raise DeadLetter(dead_letters.SCHEMA_VIOLATION, "data/targets: a target_id appears twice")
    return LegalOrder(event_id=document["id"], source=document["source"], order_id=data["order_id"],
                      authority_kind=data["authority"]["kind"], authority_name=data["authority"]["name"],
                      legal_reference=data["legal_reference"], category=data.get("category"),
                      received_at=received_at, deadline=deadline, targets=targets)


def order_event(order_id: str, targets: list[dict], received_at: datetime, *, event_id: str | None = None,
                authority: tuple[str, str] = ("court", "High Court of Delhi"),
                legal_reference: str = "IT Rules 2021 r. 3(1)(d)", category: str | None = None,
                deadline: datetime | None = None, source: str = "urn:moderation:grievance-desk") -> bytes:
    """Serialise an order, as a platform's legal desk publishes it."""
    data: dict[str, Any] = {"order_id": order_id, "authority": {"kind": authority[0], "name": authority[1]},
                            "legal_reference": legal_reference, "received_at": format_time(received_at),
                            "targets": targets}
    if category:
        data["category"] = category
    if deadline is not None:
        data["deadline"] = format_time(deadline)
    document = envelope(ORDER_TYPE, event_id or f"order-{order_id}", source, received_at, data, subject=order_id)
    document["dataschema"] = validator("legal-order").schema["$id"]
    return checked_json("legal-order", document)


def target_event(order: LegalOrder, target: Target) -> UploadEvent:
    """The target as the upload event its takedown verdict is about."""
    return UploadEvent(event_id=order.event_id, source=order.source, video_id=target.video_id or target.target_id,
                       uploader=f"legal-order:{order.order_id}", video_uri=target.video_uri or "file:///",
                       uploaded_at=order.received_at)


def entry_id(order: LegalOrder, target: Target) -> str:
    """The positive bank entry of a target: a re-upload's known-content verdict names it."""
    return f"order:{order.order_id}:{target.target_id}"


@dataclass(frozen=True)
class TargetOutcome:
    target_id: str
    status: str                 # done or failed
    reason: str | None = None
    message: str | None = None
    verdict_id: str | None = None
    entry_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target_id": self.target_id, "status": self.status}
        for name in ("reason", "message", "verdict_id", "entry_id"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value[:2000] if name == "message" else value
        return out


def order_status(outcomes: list[TargetOutcome]) -> str:
    done = sum(o.status == DONE for o in outcomes)
    return DONE if done == len(outcomes) else FAILED if done == 0 else PARTIAL


def status_record(order: LegalOrder, outcomes: list[TargetOutcome], completed_at: datetime,
                  position: SourcePosition, worker_id: str) -> tuple[bytes, bytes]:
    """Key (the order id) and value of the order's one status record."""
    elapsed = max(0.0, (completed_at - order.received_at).total_seconds())
    allowed = (order.deadline - order.received_at).total_seconds()
    document = envelope(ORDER_STATUS_TYPE, output_id(position, "order-status"), worker_source(worker_id),
                        completed_at, {
        "order_id": order.order_id, "source_event_id": order.event_id, "status": order_status(outcomes),
        "targets": [o.to_json() for o in outcomes], "received_at": format_time(order.received_at),
        "deadline": format_time(order.deadline), "completed_at": format_time(completed_at),
        "elapsed_seconds": round_score(elapsed, 3), "deadline_seconds": round_score(allowed, 3),
        "within_deadline": completed_at <= order.deadline, "worker_id": worker_id,
    }, subject=order.order_id)
    document["dataschema"] = validator("order-status").schema["$id"]
    return order.order_id.encode(), checked_json("order-status", document)
