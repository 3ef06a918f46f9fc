"""Exporting and importing hash lists, to share them with other platforms and hash-sharing
programmes: one ThreatExchange vPDQ text file per entry, plus ``entries.jsonl`` with each
entry's metadata (bank, source video, reason, who added it, when).

Our own entries may hold several frames a second where the picture moves (dense entries,
:func:`worker.bank.fingerprint.thin_dense`). A vPDQ matcher elsewhere counts an entry's
share in frames, so a dense entry would look only partly matched there by a copy hashed at
one frame a second, the reference's cadence. So by default an export keeps, of each entry,
the frame nearest each second (as vPDQ samples); ``seconds_per_frame=0`` exports every
frame, for our own banks.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm import tqdm

from worker.bank.entries import POSITIVE, BankEntry, entry_record, parse_entry_record
from worker.bank.fingerprint import VideoFingerprint, select_frames
from worker.core.events import format_time, parse_time, utcnow

MANIFEST = "entries.jsonl"


def read_bank(consumer: Any, topic: str, timeout_s: float = 60.0) -> dict[str, BankEntry]:
    """The bank as it stands: the topic read to its end offsets, tombstones applied."""
    from kafka.structs import TopicPartition

    partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    ends = consumer.end_offsets(tps)
    entries: dict[str, BankEntry] = {}
    deadline = time.monotonic() + timeout_s
    with tqdm(total=sum(ends.values()), unit="record", desc="reading the bank", file=sys.stderr) as bar:
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the bank topic {topic} was not read to its end in {timeout_s} s")
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    bar.update(1)
                    entry = parse_entry_record(record.key, record.value)
                    if isinstance(entry, str):
                        entries.pop(entry, None)
                    else:
                        entries[entry.entry_id] = entry
    return entries


def export_bank(entries: Iterable[BankEntry], folder: Path, seconds_per_frame: float = 1.0) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(folder / MANIFEST, "w") as manifest:
        for entry in tqdm(list(entries), unit="entry", desc="exporting", file=sys.stderr):
            (folder / f"{_safe(entry.entry_id)}.txt").write_text(
                at_cadence(entry.fingerprint_vpdq, seconds_per_frame))
            manifest.write(json.dumps({
                "entry_id": entry.entry_id, "file": f"{_safe(entry.entry_id)}.txt",
                "bank": entry.bank, "source_video_id": entry.source_video_id,
                "reason": entry.reason, "added_by": entry.added_by,
                "added_at": format_time(entry.added_at)}) + "\n")
            count += 1
    return count


def at_cadence(vpdq_text: str, seconds_per_frame: float) -> str:
    """The vPDQ text with only the frame nearest each ``seconds_per_frame`` step (0: all)."""
    if seconds_per_frame <= 0:
        return vpdq_text
    frames = VideoFingerprint.from_vpdq_text(vpdq_text).frames
    keep = select_frames([f.timestamp_s for f in frames], seconds_per_frame)
    if len(keep) == len(frames):
        return vpdq_text  # as it came (another platform's list keeps its own formatting)
    return VideoFingerprint(tuple(frames[i] for i in keep)).to_vpdq_text()


class HashListError(ValueError):
    """A folder of hash lists that cannot be imported as it is; nothing was published."""


def load_hash_list(folder: Path, bank: str = POSITIVE, reason: str = "imported",
                   added_by: str = "import") -> list[BankEntry]:
    """Entries from a folder of vPDQ files: with ``entries.jsonl`` its metadata is used,
    else every ``*.txt`` file is an entry named after the file. Every file is read and
    checked before anything is returned, so a bad one stops the whole import."""
    if not folder.is_dir():
        raise HashListError(f"{folder} is not a folder")
    now = utcnow()
    manifest = folder / MANIFEST
    try:
        if manifest.exists():
            rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        else:
            rows = [{"entry_id": p.stem, "file": p.name} for p in sorted(folder.glob("*.txt"))]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HashListError(f"{manifest}: {exc}") from None
    if not rows:
        raise HashListError(f"{folder} holds no {MANIFEST} and no .txt vPDQ files")
    entries = []
    for number, row in enumerate(rows, 1):
        try:
            text = (folder / row["file"]).read_text()
            VideoFingerprint.from_vpdq_text(text)  # refuse a malformed file before publishing
            entries.append(BankEntry(
                entry_id=row["entry_id"], bank=row.get("bank", bank), fingerprint_vpdq=text,
                reason=row.get("reason", reason), added_by=row.get("added_by", added_by),
                added_at=parse_time(row["added_at"]) if row.get("added_at") else now,
                source_video_id=row.get("source_video_id")))
        except (KeyError, TypeError) as exc:
            raise HashListError(f"{manifest}, entry {number}: missing or bad key {exc}") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise HashListError(f"{folder / str(row.get('file'))}: {exc}") from None
    return entries


def publish_entries(entries: list[BankEntry], topic: str,
                    send: Callable[[str, bytes, bytes], Any]) -> int:
    for entry in tqdm(entries, unit="entry", desc="importing", file=sys.stderr):
        key, value = entry_record(entry)
        send(topic, key, value)
    return len(entries)


def _safe(entry_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in entry_id)
