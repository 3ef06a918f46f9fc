"""Several records of one partition in flight: results leave in offset order, exactly once.

The reorder window on its own, then the runner on the in-memory broker with processing
threads whose jobs a test finishes in any order (``fakes.ManualThreads``).
"""
from __future__ import annotations

from collections import Counter

import pytest

from worker.runtime.ordering import ReorderWindow
from worker.testing.fakes import FakeRecord, ManualThreads

from .test_runner import World


def _record(offset: int) -> FakeRecord:
    return FakeRecord("uploads", 0, offset, None, b"")


def test_the_window_releases_only_the_finished_head_in_offset_order():
    window: ReorderWindow[str] = ReorderWindow(3)
    slots = [window.add(_record(o)) for o in (5, 6, 7)]
    assert window.full
    with pytest.raises(OverflowError):
        window.add(_record(8))
    slots[1].result = slots[2].result = "later"
    assert window.ready() == []          # 5 still runs: 6 and 7 wait
    slots[0].result = "first"
    assert window.ready(limit=2) == slots[:2]
    window.delivered(slots[:2])
    assert window.first_offset() == 7 and len(window) == 1
    with pytest.raises(ValueError):
        window.add(_record(6))           # records start in offset order only
    with pytest.raises(ValueError):
        window.delivered(slots[:1])      # already gone: only the head leaves


def _manual(world: World) -> ManualThreads:
    world.threads = ManualThreads(world.runner.outputs.handle)
    return world.threads


def _upload(world: World, make_event, names: str) -> None:
    for name in names:
        world.upload(make_event(f"vid-{name}", f"file:///videos/{name}.mp4"))


def _video_ids(world: World) -> list[str]:
    return [v["data"]["video_id"] for v in world.verdicts()]


@pytest.mark.parametrize("delivery", ["exactly_once", "at_least_once"])
def test_out_of_order_completion_is_delivered_in_offset_order(make_pipeline, make_event, delivery):
    world = World(make_pipeline(), delivery=delivery, processing_threads=4)
    threads = _manual(world)
    _upload(world, make_event, "abcd")
    world.settle(2)
    assert threads.started == [0, 1, 2, 3]       # one partition, four records at once
    assert world.consumer.tp in world.consumer.paused

    threads.finish(3, 1)
    world.settle(2)
    assert world.verdicts() == [] and world.committed() is None  # 0 is still running
    threads.finish(0)
    world.settle(2)
    assert _video_ids(world) == ["vid-a", "vid-b"] and world.committed() == 2
    threads.finish(2)
    world.settle(2)
    assert _video_ids(world) == ["vid-a", "vid-b", "vid-c", "vid-d"] and world.committed() == 4
    if delivery == "exactly_once":
        assert [p._epoch for p in world.producers] == [1]  # no aborts, no producer replaced
    assert world.sample("moderation_videos_in_flight") == 0
    assert world.consumer.tp not in world.consumer.paused


def test_a_partition_never_has_more_than_its_window_in_flight(make_pipeline, make_event):
    world = World(make_pipeline(), processing_threads=4, partition_window=2)
    threads = _manual(world)
    _upload(world, make_event, "abcd")
    world.settle(3)
    assert threads.started == [0, 1]
    threads.finish(1)
    world.settle(2)
    assert threads.started == [0, 1]             # 1 is done but 0 holds the window
    threads.finish(0)
    world.settle(2)
    assert threads.started == [0, 1, 2, 3] and world.committed() == 2
    threads.finish(2, 3)
    world.settle(2)
    assert _video_ids(world) == ["vid-a", "vid-b", "vid-c", "vid-d"]


def test_no_more_videos_run_than_there_are_processing_threads(make_pipeline, make_event):
    world = World(make_pipeline(), processing_threads=2)
    threads = _manual(world)
    _upload(world, make_event, "abcd")
    world.settle(3)
    assert threads.started == [0, 1]
    threads.finish(1)                            # a finished record frees its thread
    world.settle(1)
    assert threads.started == [0, 1, 2]


def test_revocation_mid_window_rewinds_to_the_oldest_undelivered_record(make_pipeline, make_event):
    world = World(make_pipeline(), processing_threads=4)
    threads = _manual(world)
    _upload(world, make_event, "abcd")
    world.settle(2)
    threads.finish(0, 2)
    world.settle(2)
    assert world.committed() == 1                # 0 went out; 2 waits for 1
    world.runner.revoke({world.consumer.tp})     # ... and the rebalance hands it straight back
    assert world.consumer.position_ == 1 and world.consumer.tp not in world.consumer.paused
    threads.finish(1, 3)                         # the old jobs end; their results are dropped
    world.settle(2)
    assert threads.started == [0, 1, 2, 3, 1, 2, 3]
    threads.finish(3, 2, 1)
    world.settle(2)
    counts = Counter(v["data"]["source_event_id"] for v in world.verdicts())
    assert counts == Counter({f"evt-vid-{n}": 1 for n in "abcd"})   # none lost, none twice
    assert _video_ids(world) == ["vid-a", "vid-b", "vid-c", "vid-d"] and world.committed() == 4


def test_a_failed_transaction_of_several_results_is_retried_whole(make_pipeline, make_event):
    world = World(make_pipeline(), processing_threads=3)
    threads = _manual(world)
    _upload(world, make_event, "abc")
    world.settle(1)
    threads.finish(0, 1, 2)
    world.broker.fail_next_commits = 1
    world.runner.step(world.threads)
    assert world.verdicts() == [] and world.committed() is None and world.broker.aborted == 1
    world.settle(3)
    assert _video_ids(world) == ["vid-a", "vid-b", "vid-c"] and world.committed() == 3


def test_a_resent_event_id_in_flight_beside_its_original_is_processed_once(make_pipeline, make_event):
    world = World(make_pipeline(), processing_threads=2)
    threads = _manual(world)
    world.upload(make_event("vid-a", "file:///videos/a.mp4"))
    world.upload(make_event("vid-a", "file:///videos/a.mp4"))
    world.settle(1)
    threads.finish(1, 0)                         # both passed the in-handle check
    world.settle(2)
    assert _video_ids(world) == ["vid-a"]
    [letter] = world.dead_letters()
    assert (letter["data"]["reason"], letter["data"]["source_offset"]) == ("duplicate_event", 1)
    assert world.committed() == 2
    assert world.sample("moderation_dead_letters_total", reason="duplicate_event") == 1
