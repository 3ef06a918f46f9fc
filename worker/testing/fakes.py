"""In-memory stand-ins for the pipeline's ports and for Kafka, for unit tests and dry runs.

They live in the package, next to the real adapters, so that every test exercises the same
fakes and a change to a port shows up in one place.
"""
from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from worker.core.calibration import Calibration
from worker.core.dead_letters import DeadLetter
from worker.core.events import BankCheck, ModelInfo
from worker.core.pipeline import SampledFrames
from worker.core.policy import KnownContentMatch
from worker.core.tracks import Box


class FakeFetcher:
    """Resolves URIs from a table; a value that is a DeadLetter is raised instead.

    Like the real fetcher, it yields a local file that exists inside the context: a
    placeholder of ``size`` bytes named after the table's path.
    """

    def __init__(self, table: Mapping[str, Path | DeadLetter], size: int = 1024):
        self.table = dict(table)
        self.size = size

    @contextmanager
    def fetch(self, uri: str) -> Iterator[Path]:
        found = self.table.get(uri)
        if found is None:
            raise DeadLetter("video_not_found", f"no such video {uri}")
        if isinstance(found, DeadLetter):
            raise found
        with tempfile.TemporaryDirectory(prefix="fake-fetch-") as tmp:
            path = Path(tmp) / Path(found).name
            path.write_bytes(b"\0" * self.size)
            yield path


class FakeSampler:
    """Blank frames of a fixed size, as many as asked (up to ``frame_count``), and one hash
    frame a second when ``hash_frames`` is set."""

    def __init__(self, frame_count: int = 100, fps: float = 25.0, size: tuple[int, int] = (64, 64),
                 hash_frames: bool = False):
        self.frame_count = frame_count
        self.fps = fps
        self.size = size
        self.hash_frames = hash_frames

    def sample(self, path: Path, count: int) -> SampledFrames:
        indices = sorted({int(i) for i in np.linspace(0, self.frame_count - 1, count).astype(np.int64)}) \
            if self.frame_count else []
        frames = np.zeros((len(indices), *self.size, 3), np.uint8)
        hashed = tuple(range(0, self.frame_count, max(1, round(self.fps)))) if self.hash_frames else ()
        return SampledFrames(frames, tuple(indices), tuple(i / self.fps for i in indices),
                             self.frame_count, self.fps,
                             hash_frames=np.zeros((len(hashed), 16, 16, 3), np.uint8) if hashed else None,
                             hash_indices=hashed, hash_timestamps_s=tuple(i / self.fps for i in hashed))


class FakeBank:
    """A hash bank that matches whatever ``match`` returns; the fingerprint text lists the
    hashed frame indices."""

    def __init__(self, match: KnownContentMatch | None = None):
        self.match = match
        self.checked = 0

    def check(self, frames: np.ndarray, frame_indices: Sequence[int], timestamps_s: Sequence[float]):
        self.checked += 1
        text = "\n".join(f"{i},100,{'0' * 64},{t:.3f}" for i, t in zip(frame_indices, timestamps_s))
        return BankCheck(fingerprint=text, match=self.match)


class FakeDetector:
    """The same boxes in every frame (or per frame position, if a callable is given)."""

    def __init__(self, boxes: Sequence[Box] | Callable[[int], Sequence[Box]] = (), confidence: float = 0.99,
                 by_frame: bool = False):
        """``by_frame``: the callable gets the frame's pixels instead of its position."""
        self.boxes = boxes
        self.confidence = confidence
        self.by_frame = by_frame
        self.batch_shapes: list[tuple[int, ...]] = []  # the shape of each batch it was given

    def detect(self, frames: np.ndarray) -> list[list[tuple[Box, float]]]:
        self.batch_shapes.append(tuple(frames.shape))
        out = []
        for pos in range(len(frames)):
            key = frames[pos] if self.by_frame else pos
            boxes = self.boxes(key) if callable(self.boxes) else self.boxes
            out.append([(tuple(b), self.confidence) for b in boxes])
        return out


def identity_calibration(takedown: float = 0.9, review: float = 0.5) -> Calibration:
    """A calibration that leaves scores as they are (an isotonic map through (0,0), (1,1))."""
    return Calibration("isotonic", takedown, review, isotonic_x=(0.0, 1.0), isotonic_y=(0.0, 1.0))


CALIBRATED_FAKE_MODEL = ModelInfo("fake", "0", "0" * 64, calibration=identity_calibration())
UNCALIBRATED_FAKE_MODEL = ModelInfo("fake-uncalibrated", "0", "0" * 64)


class FakeClassifier:
    """Scores each face with ``score_of(frame_position, box)``: one float (every ensemble
    member gives it) or one float per member. By default the model is calibrated with
    :func:`identity_calibration` (takedown at 0.9, review at 0.5)."""

    def __init__(self, score_of: Callable[[int, Box], float | Sequence[float]],
                 info: ModelInfo = CALIBRATED_FAKE_MODEL, members: int = 1):
        self.score_of = score_of
        self.info = info
        self.members = members
        self.calls = 0

    def score(self, frames: np.ndarray, faces: Sequence[tuple[int, Box]]) -> list[list[float]]:
        self.calls += 1
        rows = []
        for pos, box in faces:
            value = self.score_of(pos, box)
            rows.append(list(value) if isinstance(value, (list, tuple)) else [value] * self.members)
        return [list(column) for column in zip(*rows)] if rows else [[] for _ in range(self.members)]


# --- Kafka -------------------------------------------------------------------------------

@dataclass(frozen=True)
class FakeRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = -1  # ms since the epoch, as kafka-python's ConsumerRecord; -1: none
    timestamp_type: int = 0  # CreateTime


@dataclass(frozen=True)
class FakeTopicPartition:
    topic: str
    partition: int


@dataclass(frozen=True)
class FakeGroupMetadata:
    """kafka-python's ConsumerGroupMetadata, as far as fencing reads it."""

    group_id: str
    generation_id: int
    member_id: str = "fake-member"


class FakeBroker:
    """Topics of one partition each, committed group offsets, and transactions.

    Records written in a transaction become visible (as to a read_committed consumer) only
    when it commits, together with its offsets. ``fail_next_sends``, ``fail_next_commits``
    and ``fail_next_offset_commits`` make the next acknowledgements, transaction commits or
    plain offset commits fail.
    """

    def __init__(self, clock: Callable[[], float] = time.time):
        """``clock`` (seconds since the epoch) stamps each record's CreateTime, as a
        producing client's clock does."""
        self.clock = clock
        self.logs: dict[str, list[FakeRecord]] = defaultdict(list)
        self.committed: dict[tuple[str, FakeTopicPartition], int] = {}
        self.generations: dict[str, int] = defaultdict(int)
        self.epochs: dict[str, int] = defaultdict(int)
        self.fail_next_sends = 0
        self.fail_next_commits = 0
        self.fail_next_offset_commits = 0
        self.aborted = 0

    def append(self, topic: str, value: bytes | None, key: bytes | None = None) -> FakeRecord:
        record = FakeRecord(topic, 0, len(self.logs[topic]), key, value, round(self.clock() * 1000))
        self.logs[topic].append(record)
        return record

    def values(self, topic: str) -> list[bytes | None]:
        return [r.value for r in self.logs[topic]]

    def rebalance(self, group_id: str) -> None:
        """A new group generation: offsets from older members are refused (KIP-447)."""
        self.generations[group_id] += 1

    def _take_failure(self, name: str) -> bool:
        if getattr(self, name) > 0:
            setattr(self, name, getattr(self, name) - 1)
            return True
        return False


class _Ack:
    def __init__(self, record: FakeRecord | None, error: Exception | None):
        self.record, self.error = record, error

    def get(self, timeout: float | None = None) -> FakeRecord | None:
        if self.error is not None:
            raise self.error
        return self.record


class FakeProducer:
    """A producer; with ``transactional_id`` it buffers sends until ``commit_transaction``."""

    def __init__(self, broker: FakeBroker, transactional_id: str | None = None):
        self.broker = broker
        self.transactional_id = transactional_id
        self.closed = False
        self._epoch = None
        self._pending: list[tuple[str, bytes | None, bytes | None]] | None = None
        self._offsets: dict = {}

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None) -> _Ack:
        from kafka.errors import IllegalStateError, InvalidProducerEpochError

        if key is None and value is None:  # kafka-python refuses it before anything else
            raise ValueError("Need at least one: key or value")
        if self.broker._take_failure("fail_next_sends"):
            return _Ack(None, TimeoutError("fake broker did not acknowledge"))
        if self.transactional_id is None:
            return _Ack(self.broker.append(topic, value, key), None)
        if self._pending is not None and self._epoch != self.broker.epochs[self.transactional_id] \
                and any(sent == topic for sent, _, _ in self._pending):
            # Fenced in the middle of a transaction that holds this partition already: the
            # produce request meets the newer epoch, and kafka-python reports that, not fencing.
            raise InvalidProducerEpochError("a newer producer with this transactional id exists")
        self._check_epoch()
        if self._pending is None:
            raise IllegalStateError("Cannot call send outside a transaction")
        self._pending.append((topic, key, value))
        return _Ack(None, None)

    def init_transactions(self) -> None:
        self.broker.epochs[self.transactional_id] += 1
        self._epoch = self.broker.epochs[self.transactional_id]

    def _check_epoch(self) -> None:
        from kafka.errors import ProducerFencedError

        if self._epoch != self.broker.epochs[self.transactional_id]:
            raise ProducerFencedError("a newer producer with this transactional id exists")

    def begin_transaction(self) -> None:
        self._check_epoch()
        self._pending, self._offsets = [], {}

    def send_offsets_to_transaction(self, offsets: dict, group_metadata: FakeGroupMetadata) -> None:
        from kafka.errors import CommitFailedError

        self._check_epoch()
        # The broker checks the generation only of metadata that has one: a dropped member's
        # (-1, no member id) passes, as it does on a real broker (KIP-447 keeps the check off
        # for producers older than the KIP). ExactlyOnce refuses to send such metadata.
        generation = group_metadata.generation_id
        if generation >= 0 and generation != self.broker.generations[group_metadata.group_id]:
            raise CommitFailedError("the group has rebalanced since this member joined")
        self._offsets = {(group_metadata.group_id, tp): meta.offset for tp, meta in offsets.items()}

    def commit_transaction(self) -> None:
        self._check_epoch()
        if self.broker._take_failure("fail_next_commits"):
            raise TimeoutError("fake broker did not commit the transaction")
        for topic, key, value in self._pending or []:
            self.broker.append(topic, value, key)
        for (group, tp), offset in self._offsets.items():
            self.broker.committed[(group, FakeTopicPartition(tp.topic, tp.partition))] = offset
        self._pending, self._offsets = None, {}

    def abort_transaction(self) -> None:
        self._check_epoch()
        self.broker.aborted += 1
        self._pending, self._offsets = None, {}

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


@dataclass
class FakeConsumer:
    broker: FakeBroker
    topic: str
    group_id: str
    position_: int | None = None
    closed: bool = False
    commits: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.tp = FakeTopicPartition(self.topic, 0)
        self.listener = None
        self.paused: set = set()
        self.generation = self.broker.generations[self.group_id]
        self.member_id = "fake-member"
        if self.position_ is None:
            self.position_ = self.broker.committed.get((self.group_id, self.tp), 0)

    def subscribe(self, topics: Sequence[str], listener=None) -> None:
        """It reads ``topic`` only: any other topic subscribed to stays empty."""
        if self.topic not in topics:
            raise ValueError(f"this fake consumer reads {self.topic} only")
        self.listener = listener

    def poll(self, timeout_ms: int = 0, max_records: int = 500) -> dict:
        if self.tp in self.paused:
            return {}
        records = self.broker.logs[self.topic][self.position_:self.position_ + max_records]
        self.position_ += len(records)
        return {self.tp: records} if records else {}

    def pause(self, *tps) -> None:
        self.paused.update(tps)

    def resume(self, *tps) -> None:
        self.paused.difference_update(tps)

    def commit(self, offsets: dict) -> None:
        from kafka.errors import CommitFailedError

        # kafka-python refuses the commit of a member that the group has moved on without
        if self.generation != self.broker.generations[self.group_id]:
            raise CommitFailedError("the group has rebalanced since this member joined")
        if self.broker._take_failure("fail_next_offset_commits"):
            raise CommitFailedError("the group rebalanced")
        for tp, meta in offsets.items():
            self.broker.committed[(self.group_id, FakeTopicPartition(tp.topic, tp.partition))] = meta.offset
            self.commits.append(meta.offset)

    def group_metadata(self) -> FakeGroupMetadata:
        return FakeGroupMetadata(self.group_id, self.generation, self.member_id)

    def drop(self) -> None:
        """The group drops this member (its poll loop stalled past max.poll.interval.ms):
        kafka-python's heartbeat thread then resets its generation and member id."""
        self.generation, self.member_id = -1, ""

    def seek(self, tp, offset: int) -> None:
        self.position_ = offset

    def position(self, tp) -> int:
        return self.position_

    def end_offsets(self, tps) -> dict:
        return {tp: len(self.broker.logs[tp.topic]) for tp in tps}

    def assignment(self) -> set:
        return {self.tp}

    def partitions_for_topic(self, topic: str) -> set:
        return {0}

    def close(self) -> None:
        self.closed = True


class InlineThreads:
    """Runs each job at once on the caller's thread: a deterministic stand-in for the
    runner's processing threads."""

    def __init__(self, run: Callable):
        self._run = run

    def submit(self, record):
        import threading
        from concurrent.futures import Future

        future: Future = Future()
        try:
            future.set_result(self._run(record))
        except BaseException as exc:
            future.set_exception(exc)
        return future, threading.Event()

    def replace(self, abandoned) -> None:
        pass

    def stop(self, count: int) -> None:
        pass


class ManualThreads:
    """Processing threads whose jobs finish when a test says so, in any order: to drive the
    runner's reorder window deterministically. ``finish(offset)`` runs that record's job."""

    def __init__(self, run: Callable):
        self._run = run
        self.pending: dict[int, tuple[Any, Any]] = {}
        self.started: list[int] = []

    def submit(self, record):
        import threading
        from concurrent.futures import Future

        future: Future = Future()
        future.set_running_or_notify_cancel()
        self.pending[record.offset] = (record, future)
        self.started.append(record.offset)
        return future, threading.Event()

    def finish(self, *offsets: int) -> None:
        for offset in offsets:
            record, future = self.pending.pop(offset)
            try:
                future.set_result(self._run(record))
            except BaseException as exc:
                future.set_exception(exc)

    def replace(self, abandoned) -> None:
        pass

    def stop(self, count: int) -> None:
        pass


class FakeVideoScorer:
    """The evaluation's scorer port from a table of file name -> score, or -> DeadLetter.

    A score ``s`` gives faces ``(s, s)`` on frames 0 and 10 (one track); None gives a video
    without faces. ``interrupt_after`` raises KeyboardInterrupt on that call, as Ctrl-C
    would in the middle of a run. ``calls`` lists the files scored.
    """

    def __init__(self, table: Mapping[str, float | None | DeadLetter], model_key: str = "fake-sha+settings",
                 interrupt_after: int | None = None):
        self.table = dict(table)
        self.model_key = model_key
        self.model = {"name": "fake", "version": "test",
                      "checkpoint_sha256s": model_key.split("+")[0].split(",")}
        self.interrupt_after = interrupt_after
        self.calls: list[str] = []

    def score(self, path: Path):
        from worker.evaluation.run import ScoredVideo

        if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.calls.append(Path(path).name)
        found = self.table[Path(path).name]
        if isinstance(found, DeadLetter):
            raise found
        if found is None:
            return ScoredVideo(None, (), (), 0)
        return ScoredVideo(found, (found, found), (0, 10), 1)
