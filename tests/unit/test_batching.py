"""Dynamic batching across videos: flush at the maximum size or after the maximum wait,
each caller gets its own results, failures reach every caller, and the queue is bounded."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from worker.batching import BatcherClosed, DynamicBatcher
from worker.faces.batching import CrossVideoDetector
from worker.testing.fakes import FakeDetector


def _callers(batcher, items, barrier=True):
    results, errors = {}, {}
    start = threading.Barrier(len(items)) if barrier else None

    def call(i, item):
        if start is not None:
            start.wait()
        try:
            results[i] = batcher.submit(item)
        except BaseException as exc:
            errors[i] = exc

    threads = [threading.Thread(target=call, args=(i, item)) for i, item in enumerate(items)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results, errors


def _wait_until(condition, timeout_s=10.0):
    """Poll for a state the test needs, instead of sleeping and hoping the threads got there."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the batcher"
        time.sleep(0.005)


def test_a_full_batch_flushes_without_waiting_for_the_timeout():
    runs = []
    batcher = DynamicBatcher(lambda items: runs.append(list(items)) or [sum(i) for i in items],
                             max_size=4, max_wait_s=30.0, size_of=len)
    started = time.monotonic()
    results, errors = _callers(batcher, [[1, 1], [2, 2], [3, 3], [4, 4]])
    assert not errors and time.monotonic() - started < 10   # far below the 30 s wait
    assert results == {0: 2, 1: 4, 2: 6, 3: 8}              # each caller its own answer
    assert batcher.sizes == [4, 4] and sorted(len(r) for r in runs) == [2, 2]
    batcher.close()


def test_a_lone_request_runs_after_the_maximum_wait():
    stats = []
    batcher = DynamicBatcher(lambda items: [x * 10 for x in items], max_size=64, max_wait_s=0.05,
                             on_batch=stats.append)
    assert batcher.submit(7) == 70
    [only] = stats
    assert (only.requests, only.size) == (1, 1) and 0.05 <= only.waited_s < 5
    batcher.close()


def test_a_request_that_would_overflow_starts_the_next_batch_and_a_huge_one_runs_alone():
    gate = threading.Event()
    on_device = threading.Event()
    runs = []

    def run(items):
        on_device.set()
        gate.wait(10)
        runs.append([len(i) for i in items])
        return [len(i) for i in items]

    batcher = DynamicBatcher(run, max_size=4, max_wait_s=0.2, size_of=len)
    holder = threading.Thread(target=batcher.submit, args=([0],))
    holder.start()
    assert on_device.wait(10)  # the device is busy with this one ...
    results = {}
    threads = []
    for i, item in enumerate([[1, 1, 1], [2, 2], [3] * 9]):   # ... while these queue up, in order
        threads.append(threading.Thread(target=lambda i=i, item=item: results.__setitem__(i, batcher.submit(item))))
        threads[-1].start()
        _wait_until(lambda n=i + 1: batcher.queued() == n)
    gate.set()
    for t in threads + [holder]:
        t.join(10)
    assert results == {0: 3, 1: 2, 2: 9}
    assert runs == [[1], [3], [2], [9]]       # 3+2 > 4: split; 9 > 4: alone
    batcher.close()


def test_a_failing_batch_fails_each_of_its_callers_and_the_next_batch_runs():
    calls = []

    def run(items):
        calls.append(len(items))
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return list(items)

    batcher = DynamicBatcher(run, max_size=2, max_wait_s=0.5)
    results, errors = _callers(batcher, ["a", "b"])
    assert set(errors) == {0, 1} and all("device lost" in str(e) for e in errors.values())
    assert batcher.submit("c") == "c"
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit("d")


def test_the_queue_in_front_of_the_stage_is_bounded():
    gate = threading.Event()
    batcher = DynamicBatcher(lambda items: gate.wait(10) and list(items), max_size=1, max_wait_s=0.0,
                             max_queued=2)
    callers = [threading.Thread(target=batcher.submit, args=(i,), daemon=True) for i in range(6)]
    for t in callers:
        t.start()
    # one request on the device, two queued, the other callers blocked in submit
    _wait_until(lambda: batcher.queued() == 2)
    time.sleep(0.1)  # a third would show up here if the bound did not hold
    assert batcher.queued() == 2 and batcher.batches_run == 0
    gate.set()
    for t in callers:
        t.join(10)
    assert batcher.batches_run == 6 and batcher.queued() == 0
    batcher.close()


def test_frames_of_several_videos_share_detector_calls_and_come_back_per_video():
    # each frame's box says which video and frame it came from (its pixel values)
    detector = FakeDetector(lambda frame: [(float(frame[0, 0, 0]), float(frame[0, 0, 1]), 10.0, 10.0)],
                            by_frame=True)
    batched = CrossVideoDetector(detector, max_batch=12, max_wait_s=5.0)
    videos = [np.zeros((4, 8, 8, 3), np.uint8), np.zeros((4, 8, 8, 3), np.uint8),
              np.zeros((4, 16, 8, 3), np.uint8)]
    for i, video in enumerate(videos):
        video[:, 0, 0, 0] = i
        video[:, 0, 0, 1] = np.arange(4)
    results, errors = _callers(batched.batcher, videos)
    assert not errors
    assert sorted(detector.batch_shapes) == [(4, 16, 8, 3), (8, 8, 8, 3)]  # one flush, a call per frame size
    for i in range(3):
        assert [[box for box, _ in frame] for frame in results[i]] == [
            [(float(i), float(p), 10.0, 10.0)] for p in range(4)]  # its own frames, in order
    assert batched.detect(np.zeros((0, 8, 8, 3), np.uint8)) == []
    batched.close()
