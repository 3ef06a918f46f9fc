"""The real fetcher and decoder: http(s) downloads from a loopback server, decord on real files,
and the `score` command end to end (no Kafka)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from worker.errors import DeadLetter
from worker.media import DecordSampler, Fetcher
from worker.samples import sample_video

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def http_root(tmp_path):
    """A loopback HTTP server over a folder holding the carphone clip."""
    (tmp_path / "carphone.mp4").write_bytes(sample_video("carphone_pristine.mp4").read_bytes())
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_download_then_decode(http_root):
    fetcher = Fetcher(max_bytes=10 << 20, timeout_s=10)
    with fetcher.fetch(f"{http_root}/carphone.mp4") as path:
        assert path.read_bytes() == sample_video("carphone_pristine.mp4").read_bytes()
        sampled = DecordSampler().sample(path, 8)
        kept = path
    assert not kept.exists()  # the download is removed after use
    assert sampled.frames.shape == (8, 144, 176, 3)
    assert sampled.indices[0] == 0 and sampled.indices[-1] == 119


@pytest.mark.parametrize("uri_tail, max_bytes, reason", [
    ("/carphone.mp4", 1000, "video_too_large"),
    ("/no-such.mp4", 10 << 20, "video_not_found"),
])
def test_http_failures_have_reasons(http_root, uri_tail, max_bytes, reason):
    with pytest.raises(DeadLetter) as caught:
        with Fetcher(max_bytes=max_bytes, timeout_s=10).fetch(http_root + uri_tail):
            pass
    assert caught.value.reason == reason


def test_fetch_refuses_other_schemes_and_paths_outside_roots(tmp_path):
    fetcher = Fetcher(max_bytes=10 << 20, timeout_s=5, file_roots=[str(tmp_path)])
    for uri, reason in [("ftp://example.invalid/x.mp4", "unsupported_uri_scheme"),
                        (sample_video("carphone_pristine.mp4").as_uri(), "uri_not_allowed"),
                        ((tmp_path / ".." / "escape.mp4").as_uri(), "uri_not_allowed")]:
        with pytest.raises(DeadLetter) as caught:
            with fetcher.fetch(uri):
                pass
        assert caught.value.reason == reason, uri


def test_decoder_samples_evenly_with_timestamps():
    sampled = DecordSampler().sample(sample_video("bikes.mp4"), 32)
    assert sampled.frame_count == 250 and sampled.fps == pytest.approx(25.0)
    assert len(sampled.indices) == 32 and sampled.indices[-1] == 249
    assert sampled.timestamps_s[1] == pytest.approx(sampled.indices[1] / 25.0, abs=0.05)
    assert sampled.frames.shape[1:] == (272, 640, 3)


def test_decoder_asks_for_more_frames_than_the_video_has(tmp_path):
    sampled = DecordSampler().sample(sample_video("carphone_pristine.mp4"), 500)
    assert sampled.indices == tuple(range(120))


def test_score_command_without_kafka():
    result = subprocess.run(
        [sys.executable, "-m", "worker", "score", str(sample_video("carphone_pristine.mp4"))],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["type"] == "dev.moderation.verdict.v1"
    assert record["data"]["decision"] == "review"
    assert record["data"]["face_count"] >= 30


def test_score_command_reports_a_dead_letter(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    result = subprocess.run([sys.executable, "-m", "worker", "score", str(bad)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert json.loads(result.stdout)["dead_letter"] == "not_a_video"
