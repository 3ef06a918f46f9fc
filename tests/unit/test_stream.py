"""The pipeline driven without Kafka (for the benchmark): input order, dead letters, and a
lazily consumed input."""
from __future__ import annotations

import threading

from worker.core.dead_letters import DeadLetter
from worker.core.events import parse_upload_event
from worker.runtime.stream import process_stream
from worker.testing.fakes import FakeDetector

from .conftest import FACE, VIDEOS


def test_results_come_in_input_order_and_the_input_is_read_lazily(make_pipeline, make_event):
    first_started = threading.Event()
    release = threading.Event()

    def boxes(position):
        if not first_started.is_set():   # the first video is slow: the others finish first
            first_started.set()
            release.wait(10)
        return [FACE]

    table = {**VIDEOS, "file:///videos/bad.mp4": DeadLetter("video_truncated", "moov box missing")}
    pipeline = make_pipeline(table=table, detector=FakeDetector(boxes), frames_per_video=1)
    taken = []

    def events():
        for name in ["a", "bad", "b", "c", "d"] + ["a"] * 50:
            taken.append(name)
            yield parse_upload_event(make_event(f"vid-{name}", f"file:///videos/{name}.mp4"), 1 << 20)

    results = process_stream(pipeline, events(), threads=2, window=2)
    threading.Timer(0.3, release.set).start()
    head = [next(results) for _ in range(5)]
    assert len(taken) <= 5 + 2 + 2            # never far ahead of what was delivered
    rest = list(results)
    assert [r.event.video_id for r in head] == ["vid-a", "vid-bad", "vid-b", "vid-c", "vid-d"]
    assert head[1].verdict is None and head[1].dead_letter.reason == "video_truncated"
    assert all(r.verdict.decision == "takedown" for r in head if r.verdict is not None)
    assert len(rest) == 50 and all(r.latency_s >= 0 for r in rest)
