"""Hash-list export: dense entries go out at vPDQ's cadence unless every frame is asked for."""
from __future__ import annotations

import json
from datetime import datetime, timezone

from worker.bank.entries import BankEntry
from worker.bank.transfer import MANIFEST, at_cadence, export_bank, load_hash_list

HASH = "d8f8f0cce0f4a84f8c3b6a7d3e2a1c0f9b8a7c6d5e4f30211203948576a5b4c"


def vpdq(times: list[float]) -> str:
    return "".join(f"{i},100,{HASH}{i % 10},{t:.3f}\n" for i, t in enumerate(times))


def test_a_dense_entry_is_exported_one_frame_a_second_unless_all_frames_are_asked_for(tmp_path):
    dense = vpdq([i / 10 for i in range(31)])  # ten frames a second for 3 s
    entry = BankEntry("takedown:v1", "positive", dense, "takedown_verdict", "worker:w",
                      datetime(2026, 11, 28, tzinfo=timezone.utc), "v1")
    export_bank([entry], tmp_path / "cadence")
    written = (tmp_path / "cadence" / "takedown_v1.txt").read_text()
    assert [line.split(",")[3] for line in written.splitlines()] == ["0.000", "1.000", "2.000", "3.000"]
    assert json.loads((tmp_path / "cadence" / MANIFEST).read_text())["entry_id"] == "takedown:v1"
    export_bank([entry], tmp_path / "all", seconds_per_frame=0)
    assert (tmp_path / "all" / "takedown_v1.txt").read_text() == dense
    # read back as it was written
    [loaded] = load_hash_list(tmp_path / "cadence")
    assert loaded.fingerprint_vpdq == written and loaded.source_video_id == "v1"


def test_a_list_already_at_one_frame_a_second_goes_out_unchanged():
    text = "0,100,%s0,0.0\n1,99,%s1,1.0\n2,98,%s2,2.0\n" % (HASH, HASH, HASH)  # another platform's format
    assert at_cadence(text, 1.0) == text
