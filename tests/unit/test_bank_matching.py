"""The vPDQ match rule on hand-made hashes: thresholds, quality, duplicates, mirrors,
negative banks, and the index agreeing with the linear scan."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from worker.bank.fingerprint import PLAIN, FrameFingerprint, FrameHash, VideoFingerprint
from worker.bank.hamming import hamming, pairwise_distances, row_distances
from worker.bank.index import BankIndex
from worker.bank.matching import MatchRule, compare, hash_rows, linear_search

RNG = np.random.default_rng(7)


def random_hash() -> bytes:
    return RNG.integers(0, 256, 32, dtype=np.uint8).tobytes()


def flip(digest: bytes, bits: int, seed: int = 0) -> bytes:
    """The hash with ``bits`` distinct bits flipped."""
    array = np.unpackbits(np.frombuffer(digest, np.uint8))
    array[np.random.default_rng(seed).choice(256, bits, replace=False)] ^= 1
    return np.packbits(array).tobytes()


def video(*frames: bytes | list[FrameHash], quality: int = 100) -> VideoFingerprint:
    built = []
    for i, frame in enumerate(frames):
        hashes = (FrameHash(PLAIN, frame, quality),) if isinstance(frame, bytes) else tuple(frame)
        built.append(FrameFingerprint(i, float(i), hashes))
    return VideoFingerprint(tuple(built))


def test_hamming_distances():
    a = random_hash()
    assert hamming(a, a) == 0 and hamming(a, flip(a, 31)) == 31
    b = np.frombuffer(a + flip(a, 5) + flip(a, 200), np.uint8).reshape(3, 32)
    assert pairwise_distances(b[:1], b).tolist() == [[0, 5, 200]]
    assert row_distances(b, b[::-1]).tolist() == [200, 0, 200]


def test_frames_match_at_31_bits_and_not_at_32():
    a, b = random_hash(), random_hash()
    entry = video(a, b)
    assert compare(video(flip(a, 31), flip(b, 31)), entry).is_match
    result = compare(video(flip(a, 31), flip(b, 32)), entry)
    assert (result.query_matched_pct, result.entry_matched_pct) == (50.0, 50.0)
    assert not result.is_match


def test_both_percentages_and_the_median_distance():
    entry = [random_hash() for _ in range(5)]
    # the query holds 4 of the 5 entry frames (at distances 2, 4, 6, 8) and 4 frames of its own
    query = video(*[flip(h, 2 * (i + 1)) for i, h in enumerate(entry[:4])],
                  *[random_hash() for _ in range(4)])
    result = compare(query, video(*entry))
    assert result.entry_matched_pct == 80.0 and result.query_matched_pct == 50.0
    assert result.median_distance == 5.0
    assert result.is_match  # 80% of the entry, and any share of the query
    assert not compare(query, video(*entry), MatchRule(query_threshold_pct=60)).is_match
    assert not compare(query, video(*entry), MatchRule(entry_threshold_pct=81)).is_match


def test_no_matched_frame_is_never_a_match_even_at_zero_thresholds():
    rule = MatchRule(entry_threshold_pct=0, query_threshold_pct=0)
    assert not compare(video(random_hash()), video(random_hash()), rule).is_match


def test_low_quality_frames_are_left_out_and_repeated_frames_count_once():
    a, b = random_hash(), random_hash()
    dull = [FrameHash(PLAIN, random_hash(), 49)]
    entry = video(a, a, a, b, dull)
    assert hash_rows(entry, MatchRule(), mirrored=False).frame_count == 2
    assert compare(video(a), entry).entry_matched_pct == 50.0
    assert compare(video(a, b, dull), entry).query_matched_pct == 100.0
    assert compare(video(dull), entry).query_frames == 0


def test_mirrored_hashes_are_used_on_the_query_side_only():
    a, m = random_hash(), random_hash()
    query = video([FrameHash(PLAIN, random_hash(), 100), FrameHash(PLAIN, m, 100, mirrored=True)])
    assert compare(query, video(flip(m, 3))).is_match
    # the same mirrored hash in the bank entry does not take part
    entry = video([FrameHash(PLAIN, a, 100), FrameHash(PLAIN, m, 100, mirrored=True)])
    assert not compare(video(flip(m, 3)), entry).is_match


def test_known_good_frames_never_count_as_a_match():
    intro, bad = [random_hash() for _ in range(4)], [random_hash() for _ in range(4)]
    careless_entry = video(*intro[:4], bad[0])  # mostly the common intro
    query = video(*intro, *bad[1:])
    positives = {"careless": careless_entry, "bad": video(*bad)}
    assert [m.entry_id for m in linear_search(query, positives)] == ["careless"]
    reference = MatchRule(clip_min_frames=0)
    found = linear_search(query, positives, {"intro": video(*intro)}, reference)
    assert [(m.entry_id, m.negative) for m in found] == [("intro", True)]
    # what is left of the query, three of the four "bad" frames in order, is a clip of it
    found = linear_search(query, positives, {"intro": video(*intro)})
    assert [(m.entry_id, m.rule, m.query_matched_pct, m.entry_matched_pct) for m in found] == [
        ("bad", "clip", 100.0, 75.0), ("intro", "entry", pytest.approx(400 / 7), 100.0)]
    # frames of the query that are known-good no longer count in its share either
    upload = video(*intro, *bad)
    found = linear_search(upload, positives, {"intro": video(*intro)})
    assert [(m.entry_id, m.negative, m.query_matched_pct, m.query_frames) for m in found] == [
        ("bad", False, 100.0, 4), ("intro", True, 50.0, 8)]


def synthetic_bank(entries: int = 60, frames: int = 6):
    bank = {f"e{i}": video(*[random_hash() for _ in range(frames)]) for i in range(entries)}
    queries = []
    for i in range(0, entries, 3):
        hashes = [f.plain.hash for f in bank[f"e{i}"].frames]
        near = [flip(h, int(RNG.integers(0, 40)), seed=j) for j, h in enumerate(hashes)]
        queries.append(video(*near, random_hash()))
    return bank, queries


def test_the_index_finds_what_the_linear_scan_finds():
    bank, queries = synthetic_bank()
    negatives = {"neg": video(*[f.plain.hash for f in bank["e3"].frames[:3]])}
    index = BankIndex(exact=True)
    for entry_id, fp in bank.items():
        index.add(entry_id, fp)
    index.add("neg", negatives["neg"], negative=True)
    found_any = 0
    for query in queries:
        expected = linear_search(query, bank, negatives)
        assert index.search(query) == expected
        found_any += bool(expected)
    assert found_any >= len(queries) // 2


def test_the_default_probes_shortlist_near_copies_and_verify_them_exactly():
    near_hashes = [random_hash() for _ in range(50)]
    index = BankIndex()
    index.add_many((f"e{i}", video(h)) for i, h in enumerate(near_hashes))
    # one hash a few bits off: some 24-bit chunk is untouched, so the pair is found
    assert all(index.search(video(flip(h, 4, seed=i))) for i, h in enumerate(near_hashes))
    # at 31 bits one pair is found only when a whole chunk escaped every flip (about 0.4)...
    singles = sum(bool(index.search(video(flip(h, 31, seed=i)))) for i, h in enumerate(near_hashes))
    assert 5 <= singles < 50
    # ...but a video has many frames, one found pair shortlists its entry, and the entry is then
    # judged on all of its rows: the linear scan's answer
    videos = {f"v{i}": video(*[random_hash() for _ in range(10)]) for i in range(20)}
    index.add_many(videos.items())
    for i, fp in enumerate(videos.values()):
        far = video(*[flip(f.plain.hash, 31, seed=100 * i + k) for k, f in enumerate(fp.frames)])
        expected = linear_search(far, {**videos, **{f"e{j}": video(h) for j, h in enumerate(near_hashes)}})
        assert index.search(far) == expected and [m.entry_id for m in expected] == [f"v{i}"]
    # the exact index never misses a pair
    exact = BankIndex(exact=True)
    exact.add_many((f"e{i}", video(h)) for i, h in enumerate(near_hashes))
    assert all(exact.search(video(flip(h, 31, seed=i))) for i, h in enumerate(near_hashes))


def test_removal_replacement_and_rebuild_keep_the_index_exact():
    bank, queries = synthetic_bank(entries=300)
    index = BankIndex(exact=True)
    index.add_many(bank.items())
    for i in range(300):  # enough tombstones to trigger a rebuild
        if i % 3:
            assert index.remove(f"e{i}")
            del bank[f"e{i}"]
    assert not index.remove("e1") and "e1" not in index and "e3" in index
    stats = index.stats()
    assert stats.entries == 100 and stats.rows < 300 * 6  # rebuilt without the dead rows
    index.add("e3", bank["e6"])  # replaces
    bank["e3"] = bank["e6"]
    for query in queries:
        assert index.search(query) == linear_search(query, bank)


def test_searches_run_while_the_bank_is_written():
    bank, queries = synthetic_bank(entries=90)
    index = BankIndex(exact=True)
    index.add_many(list(bank.items())[:30])
    errors = []

    def search():
        try:
            for _ in range(20):
                for query in queries:
                    index.search(query)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    readers = [threading.Thread(target=search) for _ in range(3)]
    for reader in readers:
        reader.start()
    for entry_id, fp in list(bank.items())[30:]:
        index.add(entry_id, fp)
        index.remove("e0")
    for reader in readers:
        reader.join()
    assert not errors
    del bank["e0"]
    for query in queries:
        assert index.search(query) == linear_search(query, bank)


def test_an_empty_index_or_an_unusable_query_finds_nothing():
    index = BankIndex()
    assert index.search(video(random_hash())) == []
    index.add("a", video(random_hash()))
    assert index.search(video(random_hash(), quality=10)) == []


def test_the_rule_is_validated():
    for bad in (dict(max_distance=256), dict(min_quality=101), dict(entry_threshold_pct=120)):
        with pytest.raises(ValueError):
            MatchRule(**bad)


def test_a_clip_matches_by_its_own_frames_in_order():
    entry = [random_hash() for _ in range(12)]
    clip = video(*[flip(h, 6, seed=i) for i, h in enumerate(entry[3:9])])  # the middle half
    reference = MatchRule(clip_min_frames=0)
    result = compare(clip, video(*entry), reference)
    assert (result.query_matched_pct, result.entry_matched_pct, result.is_match) == (100.0, 50.0, False)
    result = compare(clip, video(*entry))
    assert (result.is_match, result.rule, result.in_order_frames) == (True, "clip", 6)
    assert (result.query_matched_pct, result.entry_matched_pct) == (100.0, 50.0)
    # the whole video still matches by the reference rule
    assert compare(video(*entry), video(*entry)).rule == "entry"


def test_the_clip_rule_wants_the_frames_in_order_and_enough_of_them():
    entry = [random_hash() for _ in range(12)]
    # the same six frames, shuffled: all match, but at most two in the entry's order
    shuffled = video(*[entry[i] for i in (8, 7, 5, 3, 6, 4)])
    result = compare(shuffled, video(*entry))
    assert result.matched_query_frames == 6 and result.in_order_frames < 3 and not result.is_match
    # two frames are too few, however well they match
    assert not compare(video(entry[4], entry[5]), video(*entry)).is_match
    assert compare(video(entry[4], entry[5], entry[6]), video(*entry)).rule == "clip"
    # a query of mostly other content: 3 of its 6 frames are under the share
    mixed = video(entry[4], entry[5], entry[6], *[random_hash() for _ in range(3)])
    assert not compare(mixed, video(*entry)).is_match
    assert compare(mixed, video(*entry), MatchRule(clip_query_threshold_pct=50)).rule == "clip"
    # a repeated entry frame counts once in a chain
    assert compare(video(entry[4], entry[4], entry[4]), video(*entry)).in_order_frames in (0, 1)


def test_longest_chain():
    from worker.bank.matching import longest_chain

    q = np.array([0, 0, 1, 1, 2, 3]); e = np.array([5, 0, 1, 6, 2, 3])
    assert longest_chain(q, e) == 4            # (0,0) (1,1) (2,2) (3,3)
    assert longest_chain(np.array([0, 0, 0]), np.array([1, 2, 3])) == 1
    assert longest_chain(np.array([], int), np.array([], int)) == 0


def test_time_slots_are_one_second_wide_whatever_the_phase():
    from worker.bank.matching import time_slots

    slot, count = time_slots([0.0, 0.04, 0.5, 0.96, 1.0, 2.0], 1.0)
    assert slot.tolist() == [0, 0, 1, 1, 1, 2] and count == 3
    assert time_slots([0.5, 1.5, 2.5], 1.0)[0].tolist() == [0, 1, 2]      # a grid off by half a step
    assert time_slots([3.0, 0.0, 1.0], 1.0)[0].tolist() == [2, 0, 1]      # positions keep their order
    slot, count = time_slots([0.0, 7.0], 1.0)
    assert slot.tolist() == [0, 1] and count == 2                       # empty seconds are not slots
    assert time_slots([], 1.0)[1] == 0


def test_a_dense_entrys_share_is_counted_in_slots():
    """An entry with four frames a second for 5 s, a whole re-upload hashed at one a second
    (one of every four frames, phase a quarter second): 5 of the entry's 6 slots matched,
    though only 5 of its 20 frames are."""
    hashes = [random_hash() for _ in range(20)]
    entry = VideoFingerprint(tuple(FrameFingerprint(i, i / 4, (FrameHash(PLAIN, h, 100),))
                                   for i, h in enumerate(hashes)))
    upload = VideoFingerprint(tuple(FrameFingerprint(k, k + 0.25, (FrameHash(PLAIN, flip(hashes[4 * k + 1], 5), 100),))
                                    for k in range(5)))
    result = compare(upload, entry)
    assert (result.entry_frames, result.matched_entry_frames) == (6, 5)
    assert result.entry_matched_pct == pytest.approx(100 * 5 / 6) and result.rule == "entry"
    per_frame = compare(upload, entry, MatchRule(entry_slot_s=0.25, clip_min_frames=0))
    assert per_frame.entry_matched_pct == 25.0 and not per_frame.is_match
    index = BankIndex()
    index.add("dense", entry)
    [found] = index.search(upload)
    assert (found.entry_frames, found.entry_matched_pct) == (6, result.entry_matched_pct)


def test_a_chain_may_stay_on_one_entry_frame_but_never_go_back():
    """A short upload is hashed at several frames a second, so where the entry kept one frame
    for a still second, several upload frames meet it: they still count in order."""
    entry = [random_hash() for _ in range(8)]
    still = video(flip(entry[2], 3, 1), flip(entry[2], 4, 2), flip(entry[2], 5, 3), flip(entry[3], 3, 4))
    result = compare(still, video(*entry))
    assert (result.in_order_frames, result.rule) == (4, "clip")
    backwards = video(flip(entry[5], 3, 1), flip(entry[4], 3, 2), flip(entry[3], 3, 3), flip(entry[2], 3, 4))
    assert compare(backwards, video(*entry)).in_order_frames == 1


def test_entries_added_one_at_a_time_stay_in_few_runs_and_exact():
    """Each addition is a sorted run, merged with the one before while that is under twice its
    size: about log2(additions) runs, and the same answers as the linear scan."""
    bank, queries = synthetic_bank(entries=200)
    index = BankIndex(exact=True)
    for entry_id, fp in bank.items():
        index.add(entry_id, fp)
    index.add("empty", video(random_hash(), quality=10))  # no usable rows: no run
    stats = index.stats()
    assert stats.entries == 201 and 1 <= stats.runs <= 9
    for query in queries:
        assert index.search(query) == linear_search(query, bank)


def test_searches_go_on_while_the_index_is_rebuilt():
    """Removing most entries rebuilds the index beside the old one: searches running at the
    same time see either, never a half-built one, and find the same as the linear scan."""
    bank, queries = synthetic_bank(entries=300)
    index = BankIndex(exact=True)
    index.add_many(bank.items())
    kept = {k: v for i, (k, v) in enumerate(bank.items()) if i % 3 == 0}
    errors, stop = [], threading.Event()

    def search():
        try:
            while not stop.is_set():
                for query in queries:
                    found = {m.entry_id for m in index.search(query)}
                    assert found <= set(bank)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    readers = [threading.Thread(target=search) for _ in range(2)]
    for reader in readers:
        reader.start()
    for entry_id in bank:
        if entry_id not in kept:
            index.remove(entry_id)
    stop.set()
    for reader in readers:
        reader.join()
    assert not errors
    assert index.stats().tombstoned_rows < 200 * 6  # a rebuild ran
    for query in queries:
        assert index.search(query) == linear_search(query, kept)
