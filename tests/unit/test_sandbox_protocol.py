"""The worker's side of the decoder child's answers, against scripted children: the child's
frames arrive one record at a time, and whatever else it sends costs one event with a
reason, never the worker (a compromised decoder controls every byte)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from worker.core.dead_letters import DeadLetter
from worker.media.limits import DecodeLimits
from worker.media import sandbox
from worker.media.sandbox import FramesHeader, SandboxedSampler, _Answered, _Child

LIMITS = DecodeLimits()
HEADER = FramesHeader(shape=(2, 2, 3, 3), indices=(0, 5), timestamps_s=(0.0, 0.2), frame_count=10,
                      fps=25.0, hash_shape=(1, 2, 3, 3), hash_indices=(0,), hash_timestamps_s=(0.0,))
FRAME_0, FRAME_1 = np.arange(18, dtype=np.uint8), np.arange(18, 36, dtype=np.uint8)
HASH_0 = np.full(18, 7, np.uint8)


def scripted(tmp_path, answer: bytes, then: str = "cat > /dev/null") -> _Child:
    """A child that sends ``answer`` to the first request, then waits for stdin to close
    (or does ``then``)."""
    canned = tmp_path / "answer"
    canned.write_bytes(answer)
    return _Child({}, command=["sh", "-c", f'head -n 1 > /dev/null; cat "{canned}"; {then}'])


def ask(child: _Child, count: int = 2):
    try:
        return child.ask(Path("upload.mp4"), count, time.monotonic() + 10, LIMITS)
    finally:
        child.kill()


def reason(child: _Child) -> tuple[str, str, bool]:
    """(reason, message, whether the child may be kept) of an answer that is a dead letter."""
    try:
        ask(child)
    except _Answered as answered:
        return answered.dead_letter.reason, answered.dead_letter.message, True
    except DeadLetter as failure:
        return failure.reason, failure.message, False
    raise AssertionError("the answer was taken")


def test_frames_and_hash_frames_arrive_record_by_record_in_decode_order(tmp_path):
    answer = HEADER.to_json() + b"F" + FRAME_0.tobytes() + b"H" + HASH_0.tobytes() + b"F" + FRAME_1.tobytes()
    sampled = ask(scripted(tmp_path, answer))
    assert np.array_equal(sampled.frames, np.stack([FRAME_0, FRAME_1]).reshape(2, 2, 3, 3))
    assert np.array_equal(sampled.hash_frames, HASH_0.reshape(1, 2, 3, 3))
    assert sampled.indices == (0, 5) and sampled.hash_indices == (0,) and sampled.fps == 25.0
    assert sampled.frames.flags.writeable


def test_a_frame_that_fails_after_the_header_is_the_childs_own_dead_letter(tmp_path):
    failed = b"E" + json.dumps({"reason": "corrupt_video", "message": "decoding failed: bad slice"}).encode() + b"\n"
    answer = HEADER.to_json() + b"F" + FRAME_0.tobytes() + failed
    assert reason(scripted(tmp_path, answer)) == ("corrupt_video", "decoding failed: bad slice", True)


@pytest.mark.parametrize("answer, expected", [
    (HEADER.to_json() + b"X" + FRAME_0.tobytes(), "an unexpected record b'X'"),
    # a third sampled frame where two were announced
    (HEADER.to_json() + b"F" + FRAME_0.tobytes() + b"F" + FRAME_1.tobytes() + b"F" + FRAME_1.tobytes(),
     "an unexpected record b'F'"),
    (HEADER.to_json() + b"H" + HASH_0.tobytes() + b"H" + HASH_0.tobytes(), "an unexpected record b'H'"),
    (b"not json\n", "not a JSON object"),
    (b"\xff\xfe\n", "not a JSON object"),
    (b"[1, 2]\n", "not a JSON object"),
    (b'{"status": "maybe"}\n', "of no known kind"),
    (b'{"status": "dead_letter", "reason": "all_fine", "message": "x"}\n', "unknown failure 'all_fine'"),
    (HEADER.to_json() + b'E{"reason": "corrupt_video"}\n', "unknown failure 'corrupt_video'"),
    (HEADER.to_json().replace(b'"shape": [2, 2, 3, 3]', b'"shape": [2, 2.5, 3, 3]'), "not whole numbers"),
    (HEADER.to_json().replace(b'"shape": [2, 2, 3, 3]', b'"shape": [2, 2, 3]'), "bad header"),
    (HEADER.to_json().replace(b'"shape": [2, 2, 3, 3]', b'"shape": [3, 2, 3, 3]'), "impossible shape"),
    (HEADER.to_json() + b"F" + FRAME_0.tobytes()[:5], "died (exit code 3)"),
])
def test_a_hostile_answer_costs_the_event_and_the_child(tmp_path, answer, expected):
    got_reason, message, kept = reason(scripted(tmp_path, answer, then="exit 3"))
    assert (got_reason, kept) == ("decoder_crashed", False) and expected in message, message


def test_bytes_past_the_announced_frames_cost_the_child(tmp_path):
    answer = (HEADER.to_json() + b"F" + FRAME_0.tobytes() + b"H" + HASH_0.tobytes() + b"F" + FRAME_1.tobytes()
              + b"trailing")
    # one write of under PIPE_BUF bytes: the header's read takes the trailing bytes with it
    assert reason(scripted(tmp_path, answer))[:2] == ("decoder_crashed", "the decoder sent more bytes than announced")


def test_a_child_that_speaks_unasked_is_never_reused(tmp_path, monkeypatch):
    """Bytes sent after an answer would be read as the next video's: such a child is
    killed when it is next taken from the idle pool, and a fresh one does the work."""
    answer = HEADER.to_json() + b"F" + FRAME_0.tobytes() + b"H" + HASH_0.tobytes() + b"F" + FRAME_1.tobytes()
    chatty = scripted(tmp_path, answer, then=f"sleep 0.2; cat {tmp_path / 'answer'}; cat > /dev/null")
    chatty.ask(Path("upload.mp4"), 2, time.monotonic() + 10, LIMITS)
    assert chatty.quiet()  # nothing more yet
    time.sleep(0.6)
    assert not chatty.quiet()
    fresh = _Child({}, command=["sh", "-c", "cat > /dev/null"])
    monkeypatch.setattr(sandbox, "_Child", lambda settings: fresh)
    sampler = SandboxedSampler(10.0, 0)
    sampler._idle.put(chatty)
    try:
        assert sampler._idle_child() is fresh
        assert chatty.proc.returncode is not None  # killed
    finally:
        fresh.kill()
        sampler.close()


def test_a_silent_child_is_killed_at_the_deadline(tmp_path):
    child = _Child({}, command=["sh", "-c", "sleep 30"])
    started = time.monotonic()
    with pytest.raises(DeadLetter) as caught:
        child.ask(Path("upload.mp4"), 2, time.monotonic() + 0.3, LIMITS)
    child.kill()
    assert caught.value.reason == "timeout" and time.monotonic() - started < 5
    assert child.proc.returncode is not None


class _FakeChild:
    def __init__(self, quiet=True):
        self._quiet, self.killed = quiet, False

    def quiet(self):
        return self._quiet and not self.killed

    def kill(self):
        self.killed = True


def test_idle_children_hand_out_a_quiet_one_and_kill_the_rest():
    from worker.media.children import IdleChildren
    idle = IdleChildren()
    dead, good = _FakeChild(quiet=False), _FakeChild()
    idle.put(dead)
    idle.put(good)
    assert idle.take(_FakeChild) is good and dead.killed and idle.empty()
    fresh = idle.take(_FakeChild)
    assert isinstance(fresh, _FakeChild) and fresh not in (dead, good)
    idle.put(good)
    idle.close()
    assert good.killed and idle.empty()
