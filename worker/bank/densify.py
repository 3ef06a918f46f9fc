"""A model takedown's bank entry, fingerprinted again densely after the verdict.

A takedown enters the bank in the verdict's own transaction, from the upload's hash frames
(about one a second): from then on every worker catches a re-encoded, resized, cropped or
captioned re-upload. A trimmed re-upload of a fast-moving video is another matter: its
frames fall between the entry's at whatever phase the trim left them, and a pan moves the
picture by 90 bits in half a second. It is caught only when the entry holds the frames
:func:`worker.bank.fingerprint.thin_dense` keeps, which takes decoding the video again at up
to ``bank.entry_hash_rate_hz`` frames a second: too slow for the verdict's path.

So, with ``bank.densify_topic`` set, the verdict's transaction also copies the upload event
there. The worker group consumes it like the uploads: the handler fetches the video (under
the same URI rules), fingerprints it as an entry, and writes the entry again under the same
id (``takedown:<video id>``) in one transaction with the queued record's offset; the
compacted bank topic keeps the dense version, and every worker's follower swaps it in.

An entry removed in between (a reviewer rejected the takedown) must not come back. The
dense entry is written only while this worker's bank holds the entry; as the entry and the
queued record were written together, a bank that lacks it is given ``wait_s`` to catch up
(its follower polls the topic) before the record is dead-lettered as ``bank_entry_gone``.
A rejection that lands while the dense fingerprint is being computed can still be undone
by it; reviewers act minutes later, the densifying takes seconds.
"""
from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Callable

from worker.bank.entries import automatic_entry_id, entry_record, takedown_entry
from worker.core import dead_letters
from worker.core.dead_letters import DeadLetter
from worker.core.events import Applied, parse_upload_event, utcnow


class TakedownDensifier:
    """The runner's side-topic handler of ``bank.densify_topic``.

    ``fingerprinter``: a :class:`worker.bank.confirmations.VideoFingerprinter` (dense hash
    frames, thinned); ``holds(entry_id)``: whether this worker's bank has the entry now.
    """

    def __init__(self, topic: str, bank_topic: str, fingerprinter: Any, holds: Callable[[str], bool],
                 worker_id: str, max_event_bytes: int = 256 * 1024, wait_s: float = 10.0,
                 now: Callable[[], datetime] = utcnow, sleep: Callable[[float], None] = time.sleep):
        self.topic = topic
        self.bank_topic = bank_topic
        self.fingerprinter = fingerprinter
        self.holds = holds
        self.worker_id = worker_id
        self.max_event_bytes = max_event_bytes
        self.wait_s = wait_s
        self.now = now
        self.sleep = sleep

    def handle_record(self, record: Any) -> Applied:
        """Raises DeadLetter (the upload's own reasons, or ``bank_entry_gone``)."""
        event = parse_upload_event(record.value, self.max_event_bytes)
        entry_id = automatic_entry_id(event.video_id)
        self._wait_for(entry_id)
        fingerprint = self.fingerprinter.fingerprint(event.video_uri)
        if not fingerprint.frames:
            raise DeadLetter(dead_letters.NO_FRAMES, "the video gave no frames to fingerprint")
        entry = takedown_entry(event.video_id, fingerprint.to_vpdq_text(), self.worker_id, self.now(),
                               fingerprint.to_json())
        return Applied({"kind": "dense takedown entry", "entry_id": entry_id, "video_id": event.video_id,
                        "frames": len(fingerprint.frames)}, [(self.bank_topic, *entry_record(entry))])

    def _wait_for(self, entry_id: str) -> None:
        deadline = time.monotonic() + self.wait_s
        while not self.holds(entry_id):
            if time.monotonic() >= deadline:
                raise DeadLetter(dead_letters.BANK_ENTRY_GONE,
                                 f"{entry_id} is not in the bank (removed since the takedown?): "
                                 "not written again")
            self.sleep(0.2)
