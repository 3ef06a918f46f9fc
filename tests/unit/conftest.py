"""Builders shared by the unit tests: a pipeline of in-memory fakes, and upload events."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from worker.core.events import upload_event
from worker.core.pipeline import Pipeline
from worker.core.policy import Policy
from worker.testing.fakes import FakeClassifier, FakeDetector, FakeFetcher, FakeSampler

UPLOADED_AT = datetime(2025, 3, 14, 9, 26, 53, tzinfo=timezone.utc)
FACE = (10.0, 12.0, 42.0, 50.0)
VIDEOS = {f"file:///videos/{name}.mp4": Path(f"/videos/{name}.mp4") for name in ("a", "b", "c", "d")}
_DEFAULT = object()


@pytest.fixture
def make_event():
    """Upload event bytes, as an upload service publishes them."""
    def build(video_id: str = "vid-a", uri: str = "file:///videos/a.mp4", **kwargs) -> bytes:
        kwargs.setdefault("event_id", f"evt-{video_id}")
        kwargs.setdefault("uploaded_at", UPLOADED_AT)
        return upload_event(video_id, uri, "user-1", **kwargs)
    return build


@pytest.fixture
def make_pipeline():
    """A pipeline of fakes: by default one face in every frame, scored 0.95 (a takedown)."""
    def build(*, table=VIDEOS, sampler=None, detector=None, classifier=_DEFAULT,
              policy=Policy(), frames_per_video=5, **kwargs) -> Pipeline:
        return Pipeline(
            fetcher=FakeFetcher(table),
            sampler=sampler or FakeSampler(frame_count=100, fps=25.0),
            detector=detector or FakeDetector([FACE]),
            classifier=FakeClassifier(lambda pos, box: 0.95) if classifier is _DEFAULT else classifier,
            policy=policy, frames_per_video=frames_per_video, **kwargs)
    return build
