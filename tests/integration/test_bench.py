"""The throughput benchmark (issue 7) runs from its one command, and its baselines see the
worker's frames."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch  # noqa: F401  (before decord: see docs/runtime.md, "Pitfalls")

from worker.media.decoding import DecordSampler
from worker.media.sampling import even_frames
from worker.testing.samples import NAMES, sample_video

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from baseline import frame_plan  # noqa: E402


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("slack", [0.0, 0.5])
def test_the_baselines_read_the_frames_the_worker_samples(name, slack):
    path = sample_video(name)
    worker = DecordSampler(frame_slack=slack).sample(path, 8)
    assert frame_plan(path, 8, slack) == list(worker.indices)
    if slack == 0.0:
        assert list(worker.indices) == even_frames(worker.frame_count, 8)


def test_the_benchmark_runs_from_one_command(tmp_path):
    out = tmp_path / "figures.json"
    run = subprocess.run(
        [sys.executable, str(BENCH / "throughput.py"), "--quick", "--threads", "2", "--no-batched-loop",
         "--cache", str(tmp_path / "clips"), "--model-cache", str(tmp_path / "models"), "--json", str(out)],
        capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "best worker setting (worker, 2 in flight) / baseline:" in run.stdout
    report = json.loads(out.read_text())
    baseline, worker = report["results"]
    assert baseline["name"].startswith("baseline") and worker["name"] == "worker, 2 in flight"
    # the same videos, frames and faces on both sides; no dead letters; figures that mean something
    assert baseline["videos"] == worker["videos"] == 4 and baseline["frames"] == worker["frames"] == 32
    assert baseline["faces"] == worker["faces"] > 0
    assert not baseline["dead_letters"] and not worker["dead_letters"]
    for side in (baseline, worker):
        assert side["videos_per_s"] > 0 and side["cpu_s_per_video"] > 0
        assert set(side["stage_share"]) >= {"decode", "detect_faces", "classify"}
    assert report["ratio_best_worker_over_baseline"] == pytest.approx(
        worker["videos_per_s"] / baseline["videos_per_s"])
