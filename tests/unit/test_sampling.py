"""Which frames the decoder samples: the DFDC winner's even spread, moved to cheap frames
only within reach."""
import random

import numpy as np
import pytest

from worker.media.sampling import MAX_SLACK, choose_frames, even_frames


def decode_cost(frames: list[int], keyframes: list[int]) -> int:
    """Frames a decoder decodes to produce ``frames`` in order, as decord does: from the last
    keyframe at or before each target, unless it is already between that keyframe and the
    target (then it decodes on from where it is)."""
    keys = sorted(keyframes)
    position, cost = -1, 0
    for frame in frames:
        key = max(k for k in keys if k <= frame)
        start = position + 1 if key <= position < frame else key
        cost += frame - start + 1
        position = frame
    return cost


def test_no_slack_is_the_winners_rule():
    for frame_count, count in [(300, 8), (120, 32), (1800, 8), (250, 32), (7, 8), (1, 4)]:
        expected = sorted({int(i) for i in np.linspace(0, frame_count - 1, count).astype(np.int64)})
        assert choose_frames(frame_count, count, 0.0, [0, 60, 120]) == expected == even_frames(frame_count, count)


def test_keyframes_within_reach_are_taken_and_the_rest_move_to_the_cheapest_frame():
    # 300 frames, 8 sampled (spacing 42.7, reach 21.4), a keyframe every 60 frames
    chosen = choose_frames(300, 8, 0.5, range(0, 300, 60))
    assert chosen == [0, 60, 65, 120, 180, 193, 240, 278]
    # 65, 193 and 278 have no keyframe within reach (85.4, 213.6 and 299 +- 21.4): each is
    # the first frame of its reach
    assert decode_cost(chosen, list(range(0, 300, 60))) < decode_cost(even_frames(300, 8), list(range(0, 300, 60))) / 3


def test_a_sampled_frame_stays_within_reach_of_its_even_position():
    rng = random.Random(7)
    for _ in range(500):
        frame_count = rng.randint(2, 3000)
        count = rng.randint(1, 40)
        slack = rng.choice([0.1, 0.25, 0.5])
        keys = sorted({0, *rng.sample(range(frame_count), min(frame_count, rng.randint(0, 30)))})
        chosen = choose_frames(frame_count, count, slack, keys)
        assert len(chosen) == min(count, frame_count)
        assert chosen == sorted(set(chosen)) and 0 <= chosen[0] and chosen[-1] < frame_count
        if count > 1 and frame_count > count:
            spacing = (frame_count - 1) / (count - 1)
            targets = np.linspace(0, frame_count - 1, count)
            # within reach; where no frame lies within reach (a reach under half a frame),
            # the even frame or the one after it
            assert all(abs(c - t) <= max(slack * spacing + 1e-9, 1) for c, t in zip(chosen, targets))


def test_moving_never_costs_more_decoding_than_the_even_frames():
    rng = random.Random(11)
    for _ in range(300):
        frame_count = rng.randint(50, 3000)
        count = rng.choice([4, 8, 16, 32])
        interval = rng.randint(1, 400)
        keys = list(range(0, frame_count, interval))
        chosen = choose_frames(frame_count, count, MAX_SLACK, keys)
        assert decode_cost(chosen, keys) <= decode_cost(even_frames(frame_count, count), keys)


def test_frames_decoded_anyway_count_as_cheap():
    # one keyframe (a whole-file GOP): frames the bank hashes anyway are taken within reach
    hashed = [0, 25, 50, 75, 100, 125, 150, 175, 200, 225]
    # targets 0, 35.6, 71.1, 106.7, 142.3, 177.9, 213.4, 249, each +- 17.8: the nearest hashed
    # frame within reach; the last has none (231.2 to 249) and takes the first of its reach
    assert choose_frames(250, 8, 0.5, [0, *hashed]) == [0, 25, 75, 100, 150, 175, 225, 232]


def test_a_video_shorter_than_the_count_gives_every_frame():
    assert choose_frames(5, 8, 0.5, [0]) == [0, 1, 2, 3, 4]
    assert choose_frames(0, 8, 0.5, []) == []


@pytest.mark.parametrize("slack", [-0.1, 0.51, 1.0])
def test_slack_beyond_half_the_spacing_is_refused(slack):
    with pytest.raises(ValueError, match="slack"):
        choose_frames(300, 8, slack, [0])
