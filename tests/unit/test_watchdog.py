"""Model calls in progress, and the liveness check that fails on one that never returns."""
from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from worker.batching import WatchedStage
from worker.metrics import Health
from worker.runtime.watchdog import DeviceCalls, TimedClassifier, TimedDetector, timed
from worker.testing.fakes import FakeClassifier, FakeDetector

from .conftest import FACE


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_no_call_no_age():
    calls = DeviceCalls()
    assert calls.oldest() is None and calls.oldest_seconds() == 0.0


def test_the_oldest_of_overlapping_calls_is_reported_until_it_returns():
    clock = Clock()
    calls = DeviceCalls(clock)
    with calls.call("classify"):
        clock.now += 10
        with calls.call("detect_faces"):
            clock.now += 5
            assert calls.oldest() == ("classify", 15.0)
        assert calls.oldest() == ("classify", 15.0)
    assert calls.oldest() is None


def test_a_call_that_raises_is_no_longer_running():
    calls = DeviceCalls()
    with pytest.raises(RuntimeError):
        with calls.call("classify"):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
    assert calls.oldest() is None


def test_timed_ports_time_each_call_and_forward_the_rest():
    seen = []
    calls = DeviceCalls()

    def detect(position):
        seen.append(calls.oldest()[0])
        return [FACE]

    detector = TimedDetector(FakeDetector(detect), calls)
    classifier = FakeClassifier(lambda position, box: seen.append(calls.oldest() and calls.oldest()[0]) or 0.25)
    timed_classifier = TimedClassifier(classifier, calls)
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    assert detector.detect(frames) == [[(FACE, 0.99)], [(FACE, 0.99)]]
    assert timed_classifier.score(frames, [(0, FACE)]) == classifier.score(frames, [(0, FACE)])
    assert seen == ["detect_faces", "detect_faces", "classify", None]  # the last call was not timed
    assert timed_classifier.info is classifier.info  # attributes are the port's own
    assert calls.oldest() is None


def test_a_timed_batcher_still_reports_its_device_calls():
    class Batcher:
        def watch(self, observe):
            self.observe = observe

        def detect(self, frames):
            return []

    port = TimedDetector(Batcher(), DeviceCalls())
    assert isinstance(port, WatchedStage)  # observe_device_stages finds it through the wrapper
    port.watch(print)
    assert port._port.observe is print


def test_timed_keeps_every_other_stage(make_pipeline):
    reader = object()  # any credentials reader: timed must carry it over untouched
    pipeline = make_pipeline(classifier=None, credentials=reader)
    again = timed(pipeline, DeviceCalls())
    assert isinstance(again.detector, TimedDetector) and again.classifier is None
    kept = ("fetcher", "sampler", "policy", "frames_per_video", "clock", "bank", "credentials")
    assert {k: getattr(again, k) for k in kept} == {k: getattr(pipeline, k) for k in kept}
    assert again.credentials is reader


def test_livez_fails_while_a_model_call_runs_past_its_deadline(caplog):
    clock = Clock()
    calls = DeviceCalls(clock)
    health = Health(clock=clock, oldest_call=calls.oldest, device_call_deadline_s=180)
    release, entered = threading.Event(), threading.Event()

    def hung_call():
        with calls.call("classify"):
            entered.set()
            release.wait(10)
    thread = threading.Thread(target=hung_call)
    thread.start()
    try:
        assert entered.wait(10)
        assert health.alive() == (True, "starting")  # before the poll loop: model loading
        health.beat()
        clock.now += 180
        assert health.alive() == (True, "ok")
        clock.now += 1
        with caplog.at_level(logging.ERROR, logger="worker.health"):
            for _ in range(3):
                health.beat()  # the poll loop keeps turning: it is the call that is stuck
                ok, why = health.alive()
        assert not ok and why == "a classify model call has been running for 181.0 s (deadline 180 s)"
        assert len(caplog.records) == 1  # logged once, not at every probe
    finally:
        release.set()
        thread.join(10)
    assert health.alive() == (True, "ok")  # the call returned: alive again
