"""In-memory stand-ins for the pipeline's ports and for Kafka, for unit tests and dry runs.

They live in the package, next to the real adapters, so that every test exercises the same
fakes and a change to a port shows up in one place.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from .errors import DeadLetter
from .events import ModelInfo
from .pipeline import SampledFrames
from .tracks import Box


class FakeFetcher:
    """Resolves URIs from a table; a value that is a DeadLetter is raised instead."""

    def __init__(self, table: Mapping[str, Path | DeadLetter]):
        self.table = dict(table)

    @contextmanager
    def fetch(self, uri: str) -> Iterator[Path]:
        found = self.table.get(uri)
        if found is None:
            raise DeadLetter("video_not_found", f"no such video {uri}")
        if isinstance(found, DeadLetter):
            raise found
        yield Path(found)


class FakeSampler:
    """Blank frames of a fixed size, as many as asked (up to ``frame_count``)."""

    def __init__(self, frame_count: int = 100, fps: float = 25.0, size: tuple[int, int] = (64, 64)):
        self.frame_count = frame_count
        self.fps = fps
        self.size = size

    def sample(self, path: Path, count: int) -> SampledFrames:
        indices = sorted({int(i) for i in np.linspace(0, self.frame_count - 1, count).round()}) \
            if self.frame_count else []
        frames = np.zeros((len(indices), *self.size, 3), np.uint8)
        return SampledFrames(frames, tuple(indices), tuple(i / self.fps for i in indices),
                             self.frame_count, self.fps)


class FakeDetector:
    """The same boxes in every frame (or per frame position, if a callable is given)."""

    def __init__(self, boxes: Sequence[Box] | Callable[[int], Sequence[Box]] = (), confidence: float = 0.99):
        self.boxes = boxes
        self.confidence = confidence

    def detect(self, frames: np.ndarray) -> list[list[tuple[Box, float]]]:
        out = []
        for pos in range(len(frames)):
            boxes = self.boxes(pos) if callable(self.boxes) else self.boxes
            out.append([(tuple(b), self.confidence) for b in boxes])
        return out


class FakeClassifier:
    """Scores each face with ``score_of(frame_position, box)``."""

    def __init__(self, score_of: Callable[[int, Box], float],
                 info: ModelInfo = ModelInfo("fake", "0", "0" * 64)):
        self.score_of = score_of
        self.info = info
        self.calls = 0

    def score(self, frames: np.ndarray, faces: Sequence[tuple[int, Box]]) -> list[float]:
        self.calls += 1
        return [self.score_of(pos, box) for pos, box in faces]


# --- Kafka -------------------------------------------------------------------------------

@dataclass(frozen=True)
class FakeRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class FakeTopicPartition:
    topic: str
    partition: int


class FakeBroker:
    """Topics as lists of records and committed offsets per group: one partition each."""

    def __init__(self):
        self.logs: dict[str, list[FakeRecord]] = defaultdict(list)
        self.committed: dict[tuple[str, FakeTopicPartition], int] = {}
        self.fail_next_sends = 0

    def append(self, topic: str, value: bytes | None, key: bytes | None = None) -> FakeRecord:
        record = FakeRecord(topic, 0, len(self.logs[topic]), key, value)
        self.logs[topic].append(record)
        return record

    def values(self, topic: str) -> list[bytes | None]:
        return [r.value for r in self.logs[topic]]


class _Ack:
    def __init__(self, record: FakeRecord | None, error: Exception | None):
        self.record, self.error = record, error

    def get(self, timeout: float | None = None) -> FakeRecord:
        if self.error is not None:
            raise self.error
        return self.record


class FakeProducer:
    def __init__(self, broker: FakeBroker):
        self.broker = broker
        self.closed = False

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None) -> _Ack:
        if self.broker.fail_next_sends > 0:
            self.broker.fail_next_sends -= 1
            return _Ack(None, TimeoutError("fake broker did not acknowledge"))
        return _Ack(self.broker.append(topic, value, key), None)

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


@dataclass
class FakeConsumer:
    broker: FakeBroker
    topic: str
    group_id: str
    position: int | None = None
    closed: bool = False
    commits: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.tp = FakeTopicPartition(self.topic, 0)
        if self.position is None:
            self.position = self.broker.committed.get((self.group_id, self.tp), 0)

    def poll(self, timeout_ms: int = 0, max_records: int = 500) -> dict:
        records = self.broker.logs[self.topic][self.position:self.position + max_records]
        self.position += len(records)
        return {self.tp: records} if records else {}

    def commit(self, offsets: dict) -> None:
        for tp, meta in offsets.items():
            self.broker.committed[(self.group_id, FakeTopicPartition(tp.topic, tp.partition))] = meta.offset
            self.commits.append(meta.offset)

    def seek(self, tp, offset: int) -> None:
        self.position = offset

    def assignment(self) -> set:
        return {self.tp}

    def close(self) -> None:
        self.closed = True
