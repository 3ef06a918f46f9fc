"""Which frames of a video the detector sees: evenly spread, moved to cheap frames where allowed.

A decoder reaches frame *i* by seeking to the keyframe at or before *i* and decoding every
frame from there, so a frame's price is its distance from that keyframe (a 2-s keyframe
interval at 30 fps makes the average frame cost 30 decodes). Frames the decoder produces
anyway (the bank's hash frames) cost nothing more. :func:`choose_frames` keeps the DFDC
winner's even spread, ``linspace(0, frame_count - 1, count)`` truncated, and lets each
sampled frame move by at most ``slack`` times the spacing between sampled frames to the
cheapest frame within that reach. ``slack = 0`` is the winner's rule exactly.
"""
from __future__ import annotations

import bisect
import math
from typing import Sequence

import numpy as np

MAX_SLACK = 0.5  # each sampled frame stays nearer its own even position than any other's


def even_frames(frame_count: int, count: int) -> list[int]:
    """The DFDC winner's rule: ``linspace(0, frame_count - 1, count)`` truncated, repeats
    (a video shorter than ``count``) dropped."""
    return sorted({int(i) for i in np.linspace(0, frame_count - 1, num=count).astype(np.int64)})


def choose_frames(frame_count: int, count: int, slack: float = 0.0,
                  cheap: Sequence[int] = ()) -> list[int]:
    """``count`` distinct frame indices (fewer only when the video is shorter), increasing.

    Sampled frame *k* targets ``t = k * spacing`` and may land anywhere in
    ``[t - slack * spacing, t + slack * spacing]``, after the frame chosen before it. Within
    that window it takes the ``cheap`` frame (keyframes, frames decoded anyway) nearest
    ``t``; with none there, the window's first frame, which is the cheapest to decode of
    the frames after the same keyframe.
    """
    if frame_count < 1 or count < 1:
        return []
    exact = even_frames(frame_count, count)
    if not 0.0 <= slack <= MAX_SLACK:
        raise ValueError(f"slack must be within [0, {MAX_SLACK}], not {slack}")
    if slack == 0.0 or count == 1 or frame_count <= count:
        return exact
    spacing = (frame_count - 1) / (count - 1)
    reach = slack * spacing
    anchors = sorted({int(i) for i in cheap if 0 <= i < frame_count})
    chosen: list[int] = []
    for target in np.linspace(0, frame_count - 1, num=count):
        low = max(math.ceil(target - reach), chosen[-1] + 1 if chosen else 0)
        high = min(math.floor(target + reach), frame_count - 1)
        if low > high:  # no frame within a reach under half a frame: the even one (or the next)
            low = high = min(max(int(target), chosen[-1] + 1 if chosen else 0), frame_count - 1)
        first = bisect.bisect_left(anchors, low)
        last = bisect.bisect_right(anchors, high)
        if first < last:
            chosen.append(min(anchors[first:last], key=lambda i: (abs(i - target), i)))
        else:
            chosen.append(low)
    return chosen
