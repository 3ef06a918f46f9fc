"""The latency window: what counts as a latency, and on whose clock."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from worker.config import Config, ConfigError, WorkerConfig
from worker.runtime.clocks import LatencyWindow, record_time
from worker.testing.fakes import FakeRecord

END = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("seconds", "admitted"), [
    (0.0, 0.0), (12.5, 12.5), (86_400.0, 86_400.0), (86_400.5, None),
    (-1.0, 0.0), (-300.0, 0.0), (-300.5, None),
])
def test_the_window_admits_latencies_within_it_and_clamps_small_skew(seconds, admitted):
    window = LatencyWindow(max_s=86_400.0, skew_s=300.0)
    assert window.admit(END - timedelta(seconds=seconds), END) == admitted


def test_no_start_is_not_a_latency():
    assert LatencyWindow().admit(None, END) is None


def test_the_record_time_is_its_kafka_timestamp_in_utc():
    record = FakeRecord("uploads", 0, 0, None, b"", round(END.timestamp() * 1000))
    assert record_time(record) == END
    assert record_time(FakeRecord("uploads", 0, 0, None, b"")) is None  # -1: the record has none


def test_the_window_comes_from_the_worker_config_and_is_checked():
    assert LatencyWindow.of(WorkerConfig(latency_window_s=60.0, clock_skew_s=5.0)) == LatencyWindow(60.0, 5.0)
    with pytest.raises(ConfigError, match="latency_window_s"):
        Config(worker=WorkerConfig(latency_window_s=0.0))
