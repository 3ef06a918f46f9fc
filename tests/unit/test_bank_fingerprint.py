"""Fingerprints: PDQ bit order, frame sampling, border trimming, and the vPDQ text format."""
from __future__ import annotations

import numpy as np
import pdqhash
import pytest

from worker.bank.fingerprint import (PLAIN, TRIM, FrameFingerprint, FrameHash, HashingConfig,
                                     VideoFingerprint, fingerprint_frames, hash_frame, pdq_hash,
                                     select_frames, uniform_borders)
from worker.bank.hamming import hamming


def textured(seed: int, height: int = 144, width: int = 176) -> np.ndarray:
    """A smooth random picture: enough structure for a PDQ quality of 100."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (-(-height // 8), -(-width // 8), 3)).astype(np.uint8)
    return np.ascontiguousarray(np.kron(coarse, np.ones((8, 8, 1), np.uint8))[:height, :width])


def test_hash_bytes_are_in_the_order_of_the_reference_hex():
    # python-threatexchange writes pdqhash's bit vector as one binary number, most
    # significant bit first; its tests pin that form to the reference's published hashes.
    image = textured(9)
    bits, quality = pdqhash.compute(image)
    reference_hex = "%064x" % int("".join(str(b) for b in bits), 2)
    digest, ours = pdq_hash(image)
    assert digest.hex() == reference_hex and ours == quality == 100


def test_one_frame_per_step_nearest_to_each_second():
    assert select_frames([0.0, 0.5, 1.0, 1.4, 2.2, 3.9], 1.0) == [0, 2, 4, 5]
    assert select_frames(np.linspace(0, 3.967, 32), 1.0) == [0, 8, 16, 23, 31]
    assert select_frames([0.0, 0.1, 0.2], 0.0) == [0, 1, 2]
    assert select_frames([], 1.0) == [] and select_frames([5.0], 1.0) == [0]
    # out of order input: positions, not ranks
    assert select_frames([2.0, 0.0, 1.0], 1.0) == [0, 1, 2]


def test_letterbox_bars_are_found_but_a_one_sided_caption_bar_is_not():
    picture = textured(1, 100, 160)
    letterboxed = np.zeros((140, 160, 3), np.uint8)
    letterboxed[20:120] = picture
    assert uniform_borders(letterboxed) == (20, 20, 0, 0)
    captioned = picture.copy()
    captioned[85:] = 0
    assert uniform_borders(captioned) == (0, 0, 0, 0)
    bordered = np.full((120, 180, 3), (200, 30, 60), np.uint8)
    bordered[10:110, 10:170] = picture
    assert uniform_borders(bordered) == (10, 10, 10, 10)
    assert uniform_borders(np.zeros((50, 50, 3), np.uint8)) == (0, 0, 0, 0)  # all border


def test_extra_hashes_are_flagged_and_the_plain_one_comes_first():
    frame = np.zeros((140, 160, 3), np.uint8)
    frame[20:120] = textured(2, 100, 160)
    hashes = hash_frame(frame)
    assert hashes[0].kind == PLAIN and not hashes[0].mirrored
    kinds = {(h.kind, h.mirrored) for h in hashes}
    assert {(PLAIN, True), (TRIM, False), (TRIM, True), ("centre90", False),
            ("centre70", True)} <= kinds
    assert len(hash_frame(frame, HashingConfig.reference())) == 1


def test_a_mirrored_frame_has_the_mirror_hash_of_its_original():
    frame = textured(3)
    original = hash_frame(frame)
    mirrored = hash_frame(np.ascontiguousarray(frame[:, ::-1]))
    assert hamming(mirrored[0].hash, original[1].hash) <= 8
    assert hamming(mirrored[0].hash, original[0].hash) > 64


def fingerprint(seed: int = 0, frames: int = 4) -> VideoFingerprint:
    video = np.stack([textured(seed + i) for i in range(frames)])
    return fingerprint_frames(video, [i * 1.0 + 0.0004 for i in range(frames)],
                              frame_indices=[i * 30 for i in range(frames)])


def test_vpdq_text_round_trips_and_carries_plain_hashes_only():
    fp = fingerprint()
    text = fp.to_vpdq_text()
    lines = text.splitlines()
    assert len(lines) == 4
    number, quality, hex_, stamp = lines[1].split(",")
    assert (number, stamp) == ("30", "1.000") and len(hex_) == 64 and 0 <= int(quality) <= 100
    back = VideoFingerprint.from_vpdq_text(text)
    assert back == fp.plain_only()
    assert back.to_vpdq_text() == text
    assert VideoFingerprint.from_json(fp.to_json()) == fp


def test_vpdq_text_is_read_like_the_reference_reader():
    digest = "e271017837246aaccddea259648fb7d62f435c89d9e99b2497763e216c8d055c"
    fp = VideoFingerprint.from_vpdq_text(f"0,100,{digest},0.000\r\n\n1,87,{digest},0.033,extra\n")
    assert [f.plain.quality for f in fp.frames] == [100, 87]
    assert fp.frames[1].timestamp_s == 0.033 and fp.frames[0].plain.hex == digest
    for bad in ("0,100,abc,0.0\n", "0,100\n", f"0,101,{digest},0.0\n", f"x,1,{digest},0.0\n"):
        with pytest.raises(ValueError):
            VideoFingerprint.from_vpdq_text(bad)


def test_malformed_fingerprints_are_refused():
    with pytest.raises(ValueError):
        FrameHash(PLAIN, b"short", 100)
    with pytest.raises(ValueError):
        FrameFingerprint(0, 0.0, (FrameHash("centre90", bytes(32), 100),))
    with pytest.raises(ValueError):
        VideoFingerprint.from_json('{"format": "something-else", "frames": []}')
    with pytest.raises(ValueError):
        fingerprint_frames(np.zeros((2, 8, 8, 3), np.uint8), [0.0])
    with pytest.raises(ValueError):
        hash_frame(np.zeros((8, 8), np.uint8))


def test_an_uncrop_guess_recovers_the_originals_centre_crop():
    from worker.bank.fingerprint import centre_crop, side_crop, uncrop_region

    original = np.arange(200 * 300 * 3, dtype=np.uint32).reshape(200, 300, 3)
    target = centre_crop(original, 0.8)
    for side in ("left", "right", "top", "bottom"):
        for cut in (0.05, 0.1):
            copy = side_crop(original, side, cut)
            assert np.array_equal(uncrop_region(copy, side, cut, 0.8), target), (side, cut)


def test_uncrop_hashes_are_query_side_only_and_not_stored_in_the_bank():
    from worker.bank.fingerprint import query_side_only
    from worker.bank.matching import MatchRule, hash_rows

    frame = np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    fingerprint = fingerprint_frames([frame], [0.0])
    kinds = [h.kind for h in fingerprint.frames[0].hashes]
    guesses = [k for k in kinds if query_side_only(k)]
    assert sorted(guesses) == sorted(f"{side}{d}" for side in ("left", "right", "top", "bottom")
                                     for d in (50, 75, 100))
    assert not any(query_side_only(k) for k in ("plain", "trim", "centre80"))
    stored = fingerprint.bank_side()
    assert [h.kind for h in stored.frames[0].hashes] == [k for k in kinds if k not in guesses]
    rule = MatchRule(min_quality=0)
    entry_rows, query_rows = (hash_rows(fingerprint, rule, mirrored=m) for m in (False, True))
    assert len(entry_rows.bits) == len(hash_rows(stored, rule, mirrored=False).bits)
    assert len(query_rows.bits) == len(kinds)


def panning(frames: int, step: int, seed: int = 3, size: int = 128) -> list[np.ndarray]:
    """A window moving ``step`` pixels a frame across a wide textured picture."""
    wide = textured(seed, size, size + frames * step)
    return [np.ascontiguousarray(wide[:, k * step:k * step + size]) for k in range(frames)]


def test_dense_entries_keep_a_frame_wherever_the_picture_moved_on():
    from worker.bank.fingerprint import thin_dense

    still = [textured(1, 128, 128)] * 60                      # 2 s still at 30 fps
    moving = panning(60, 2)                                   # then 2 s of a pan
    frames, times = still + moving, [i / 30 for i in range(120)]
    kept = thin_dense(frames, times, keep_distance=16)
    digests = [np.frombuffer(pdq_hash(f)[0], np.uint8) for f in frames]
    distance = lambda a, b: int(np.unpackbits(digests[a] ^ digests[b]).sum())  # noqa: E731
    # the still part: one frame a second; the pan: many more
    assert [i for i in kept if i < 60] == [0, 30]
    assert len([i for i in kept if i >= 60]) > 4
    # every dropped frame is within 16 bits of the kept frame before it, and no kept frame is
    # more than a second after the one before it
    for i in range(120):
        before = max(k for k in kept if k <= i)
        assert distance(i, before) <= 16 and times[i] - times[before] < 1.0 + 1e-9
    # out of order input: positions, in time order
    assert thin_dense(frames[::-1], times[::-1], keep_distance=16) == sorted(119 - k for k in kept)


def test_an_entry_fingerprint_holds_the_kept_frames_with_bank_side_hashes_only():
    from worker.bank.fingerprint import fingerprint_entry, query_side_only, thin_dense

    frames = panning(30, 3)
    times = [i / 30 for i in range(30)]
    entry = fingerprint_entry(frames, times, range(100, 130), keep_distance=16)
    kept = thin_dense(frames, times, keep_distance=16)
    assert [f.frame_index for f in entry.frames] == [100 + k for k in kept]
    assert entry.bank_side() == entry
    assert not any(query_side_only(h.kind) for f in entry.frames for h in f.hashes)
    with pytest.raises(ValueError):
        fingerprint_entry(frames, times[:-1])
