"""Fuzzing the media entry point (the sandboxed decoder) with mutated and random files:
every input ends as frames or as a dead letter with a known reason, and the worker's
process never crashes. Budget bounded for CI."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.core.dead_letters import REASONS, DeadLetter
from worker.core.pipeline import SampledFrames
from worker.media.sandbox import SandboxedSampler
from worker.testing.samples import sample_video

SOURCE = sample_video("carphone_pristine.mp4").read_bytes()
BUDGET = settings(max_examples=40, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

mutations = st.lists(st.tuples(st.integers(0, len(SOURCE) - 1), st.binary(min_size=1, max_size=16)),
                     min_size=1, max_size=20)


@pytest.fixture(scope="module")
def sandbox():
    sampler = SandboxedSampler(timeout_s=20, memory_bytes=2 << 30, max_pixels=1920 * 1080)
    yield sampler
    sampler.close()


def decodes_or_dead_letters(sandbox, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.mp4"
        path.write_bytes(data)
        try:
            sampled = sandbox.sample(path, 8)
        except DeadLetter as failure:
            assert failure.reason in REASONS
        else:
            assert isinstance(sampled, SampledFrames) and sampled.frames.ndim == 4


@BUDGET
@given(mutations)
def test_mutated_mp4(sandbox, edits):
    data = bytearray(SOURCE)
    for at, junk in edits:
        data[at:at + len(junk)] = junk
    decodes_or_dead_letters(sandbox, bytes(data))


@BUDGET
@given(st.integers(0, len(SOURCE)), st.integers(0, len(SOURCE)))
def test_cut_mp4(sandbox, start, stop):
    decodes_or_dead_letters(sandbox, SOURCE[min(start, stop):max(start, stop)])


@BUDGET
@given(st.binary(max_size=4096))
def test_random_bytes(sandbox, data):
    decodes_or_dead_letters(sandbox, data)
