"""The records a verdict adds to its own transaction for the hash bank.

A model's takedown adds the video's fingerprint to the bank, so every worker catches its
re-uploads from the moment the verdict is visible (and, with ``bank.densify_topic``, queues
the upload for a dense fingerprint of the entry: :mod:`worker.bank.densify`). A known-content
takedown goes out without the models; with ``bank.score_matches`` its upload is queued for
the score to follow (:mod:`worker.bank.scoring`). The runner calls this as one of its
verdict hooks (:class:`worker.runtime.outputs.VerdictHook`), so all of it is delivered, or
none of it, with the verdict and its offset.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from worker.bank.entries import entry_record, takedown_entry
from worker.core.events import Record, Verdict, utcnow
from worker.core.policy import TAKEDOWN


class TakedownRecords:
    def __init__(self, worker_id: str, bank_topic: str | None = None, densify_topic: str | None = None,
                 score_topic: str | None = None, now: Callable[[], datetime] = utcnow):
        """``bank_topic``: where a model takedown's entry goes (None: no entries);
        ``densify_topic``: where its upload is queued to be fingerprinted densely;
        ``score_topic``: where a known-content match's upload is queued to be scored."""
        self.worker_id = worker_id
        self.bank_topic = bank_topic
        self.densify_topic = densify_topic
        self.score_topic = score_topic
        self.now = now

    def records(self, verdict: Verdict, record: Any) -> list[Record]:
        check, video_id = verdict.bank, verdict.event.video_id.encode()
        if check is None:
            return []
        if check.match is not None:
            return [(self.score_topic, video_id, record.value)] if self.score_topic else []
        if self.bank_topic is None or verdict.decision != TAKEDOWN or not check.fingerprint:
            return []
        entry = takedown_entry(verdict.event.video_id, check.fingerprint, self.worker_id, self.now(),
                               check.fingerprint_full)
        records: list[Record] = [(self.bank_topic, *entry_record(entry))]
        if self.densify_topic:
            records.append((self.densify_topic, video_id, record.value))
        return records
