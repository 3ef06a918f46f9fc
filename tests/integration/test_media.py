"""Hostile and broken input at the media entry points: the real fetcher against loopback
HTTP servers, and the real decoder (decord, in its sandboxed child process) on real files.
Each case ends as one specific dead-letter reason, within its time limit."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch  # noqa: F401  (before decord: see docs/runtime.md, "Pitfalls")
import decord

from worker.core.dead_letters import DeadLetter
from worker.media.decoding import DecordSampler
from worker.media.fetch import Fetcher
from worker.media.sampling import choose_frames, even_frames
from worker.media.sandbox import SandboxedSampler
from worker.testing.samples import sample_video

from ..media_factory import (CODECS, corrupt_moov, set_mp4_rotation, write_audio_only,
                             write_video, write_zero_frames)

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = ["127.0.0.0/8"]


def reason_of(call) -> str:
    with pytest.raises(DeadLetter) as caught:
        call()
    return caught.value.reason


def fetch(fetcher: Fetcher, uri: str) -> bytes:
    with fetcher.fetch(uri) as path:
        return path.read_bytes()


class _Handler(BaseHTTPRequestHandler):
    """Routes: /redirect/N (N more hops), /loop, /to?url=U, /drip, /chunked-big, else files."""

    root: Path

    def do_GET(self):  # noqa: N802
        if self.path.startswith("/redirect/"):
            hops = int(self.path.rsplit("/", 1)[1])
            self._redirect("/carphone.mp4" if hops == 0 else f"/redirect/{hops - 1}")
        elif self.path == "/loop":
            self._redirect("/loop")
        elif self.path.startswith("/to?url="):
            self._redirect(self.path.split("=", 1)[1])
        elif self.path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        elif self.path == "/chunked-big":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"y" * 65536
            for _ in range(40):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        else:
            file = self.root / self.path.lstrip("/")
            if not file.is_file():
                self.send_error(404)
                return
            body = file.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def _redirect(self, location: str):
        self.send_response(302)
        self.send_header("Location", location)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    """A loopback HTTP server over a folder holding the carphone clip."""
    (tmp_path / "carphone.mp4").write_bytes(sample_video("carphone_pristine.mp4").read_bytes())
    handler = type("Handler", (_Handler,), {"root": tmp_path})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def loopback_fetcher(**kw) -> Fetcher:
    kw.setdefault("max_bytes", 10 << 20)
    kw.setdefault("timeout_s", 10)
    return Fetcher(allowed_networks=LOOPBACK, **kw)


# --- fetching -----------------------------------------------------------------------------

def test_http_download_then_decode(http_root):
    with loopback_fetcher().fetch(f"{http_root}/carphone.mp4") as path:
        assert path.read_bytes() == sample_video("carphone_pristine.mp4").read_bytes()
        sampled = DecordSampler().sample(path, 8)
        kept = path
    assert not kept.exists()  # the download is removed after use
    assert sampled.frames.shape == (8, 144, 176, 3)


def test_redirects_are_followed_up_to_the_cap(http_root):
    assert len(fetch(loopback_fetcher(max_redirects=3), f"{http_root}/redirect/2")) > 0
    assert reason_of(lambda: fetch(loopback_fetcher(max_redirects=3), f"{http_root}/redirect/3")) \
        == "too_many_redirects"
    assert reason_of(lambda: fetch(loopback_fetcher(), f"{http_root}/loop")) == "too_many_redirects"


@pytest.mark.parametrize("target", [
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata service
    "http://10.0.0.1/x.mp4",
    "http://[::1]/x.mp4",
    "http://224.0.0.1/x.mp4",
    "http://0.0.0.0/x.mp4",
    "ftp://example.com/x.mp4",
    "file:///etc/passwd",
])
def test_a_redirect_to_a_forbidden_place_is_refused_before_connecting(http_root, target):
    reason = reason_of(lambda: fetch(loopback_fetcher(), f"{http_root}/to?url={target}"))
    assert reason in ("uri_not_allowed", "unsupported_uri_scheme")


def test_non_public_addresses_need_an_allow_list(http_root):
    strict = Fetcher(max_bytes=10 << 20, timeout_s=5)
    assert reason_of(lambda: fetch(strict, f"{http_root}/carphone.mp4")) == "uri_not_allowed"


def test_dns_is_resolved_once_and_every_answer_checked():
    asked = []

    def resolve(host, port):
        asked.append(host)
        return {"cdn.example": ["93.184.216.34", "10.1.2.3"],  # one public, one private answer
                "meta.example": ["169.254.169.254"],
                "mapped.example": ["::ffff:127.0.0.1"]}[host]

    fetcher = Fetcher(max_bytes=1 << 20, timeout_s=5, resolve=resolve)
    for host in ("cdn.example", "meta.example", "mapped.example"):
        assert reason_of(lambda: fetch(fetcher, f"http://{host}/v.mp4")) == "uri_not_allowed"
    assert asked == ["cdn.example", "meta.example", "mapped.example"]


@pytest.mark.parametrize("route, max_bytes, reason", [
    ("/carphone.mp4", 1000, "video_too_large"),  # Content-Length says so
    ("/chunked-big", 1 << 20, "video_too_large"),  # no length: counted while streaming
    ("/no-such.mp4", 10 << 20, "video_not_found"),
])
def test_http_failures_have_reasons(http_root, route, max_bytes, reason):
    assert reason_of(lambda: fetch(loopback_fetcher(max_bytes=max_bytes), http_root + route)) == reason


def test_a_slow_drip_download_stops_at_the_deadline(http_root):
    started = time.monotonic()
    assert reason_of(lambda: fetch(loopback_fetcher(timeout_s=1.0), f"{http_root}/drip")) == "fetch_timeout"
    assert time.monotonic() - started < 3.0


def test_a_closed_port_is_a_fetch_failure():
    assert reason_of(lambda: fetch(loopback_fetcher(timeout_s=2), "http://127.0.0.1:9/v.mp4")) == "fetch_failed"


def test_file_uris_stay_under_the_roots(tmp_path):
    root = tmp_path / "uploads"
    root.mkdir()
    (root / "ok.mp4").write_bytes(b"data")
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"secret")
    (root / "link.mp4").symlink_to(outside)
    fetcher = Fetcher(max_bytes=1 << 20, timeout_s=5, file_roots=[str(root)])
    assert fetch(fetcher, (root / "ok.mp4").as_uri()) == b"data"
    for uri in [(root / "link.mp4").as_uri(),                      # symlink that escapes
                f"file://{root}/../secret.mp4",                     # '..' traversal
                outside.as_uri(),
                f"file://remote-host{root}/ok.mp4"]:
        assert reason_of(lambda: fetch(fetcher, uri)) == "uri_not_allowed", uri
    no_roots = Fetcher(max_bytes=1 << 20, timeout_s=5)
    assert reason_of(lambda: fetch(no_roots, (root / "ok.mp4").as_uri())) == "uri_not_allowed"
    assert reason_of(lambda: fetch(fetcher, (root / "gone.mp4").as_uri())) == "video_not_found"


# --- decoding -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sandbox():
    sampler = SandboxedSampler(timeout_s=60, memory_bytes=4 << 30, max_pixels=1920 * 1080,
                               max_duration_s=60)
    yield sampler
    sampler.close()


@pytest.mark.parametrize("name, fmt, codec", CODECS)
def test_every_codec_decodes(sandbox, tmp_path, name, fmt, codec):
    sampled = sandbox.sample(write_video(tmp_path / name, fmt, codec), 8)
    assert sampled.frames.shape == (8, 144, 192, 3)
    assert sampled.frames[0, 10, 10, 0] > 180 and sampled.frames[0, 130, 180, 0] < 60  # not garbage


def test_variable_frame_rate_keeps_real_timestamps(sandbox, tmp_path):
    sampled = sandbox.sample(write_video(tmp_path / "vfr.mp4", frame_ms=[80, 20, 40]), 30)
    gaps = [round(b - a, 3) for a, b in zip(sampled.timestamps_s, sampled.timestamps_s[1:])]
    assert len(set(gaps)) > 1 and all(g > 0 for g in gaps)


def test_rotation_metadata_gives_upright_frames(sandbox, tmp_path):
    path = set_mp4_rotation(write_video(tmp_path / "portrait.mp4"), 90)
    frames = sandbox.sample(path, 4).frames
    assert frames.shape == (4, 192, 144, 3)
    # The bright top-left quadrant, shown rotated 90 degrees clockwise, is at the top right.
    assert frames[0, 5, 140, 0] > 180 and frames[0, 5, 5, 0] < 60


def test_moov_at_the_end_decodes(sandbox):
    data = sample_video("carphone_pristine.mp4").read_bytes()
    assert data.find(b"moov") > data.find(b"mdat")
    assert sandbox.sample(sample_video("carphone_pristine.mp4"), 4).frames.shape == (4, 144, 176, 3)


def _random(path: Path, prefix: bytes = b"", size: int = 50_000) -> Path:
    path.write_bytes(prefix + random.Random(20260101).randbytes(size))
    return path


def _truncated(path: Path) -> Path:
    data = sample_video("carphone_pristine.mp4").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.write_bytes(b"") or p, "empty_file"),
    (_random, "not_a_video"),
    (_truncated, "video_truncated"),
    (lambda p: corrupt_moov(sample_video("carphone_pristine.mp4"), p), "corrupt_video"),
    (lambda p: write_audio_only(p), "not_a_video"),
    (lambda p: write_zero_frames(p), "no_frames"),
    (lambda p: _random(p, b"\x89PNG\r\n\x1a\n", 2000), "not_a_video"),
])
def test_broken_files_have_specific_reasons(sandbox, tmp_path, make, reason):
    path = make(tmp_path / "upload.mp4")
    assert reason_of(lambda: sandbox.sample(path, 8)) == reason


def test_an_image_is_not_a_video(sandbox, tmp_path):
    from PIL import Image

    import numpy as np
    for suffix in ("png", "jpg"):
        path = tmp_path / f"picture.{suffix}"
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
        assert reason_of(lambda: sandbox.sample(path, 8)) == "not_a_video"


def test_dimensions_over_the_cap_are_refused_before_decoding(sandbox):
    small_cap = SandboxedSampler(timeout_s=30, memory_bytes=4 << 30, max_pixels=640 * 480)
    try:
        assert reason_of(lambda: small_cap.sample(sample_video("bigbuckbunny.mp4"), 4)) \
            == "video_dimensions_too_large"
    finally:
        small_cap.close()


def test_dimensions_over_the_cap_are_refused_at_the_first_frame_without_an_mp4_header(tmp_path):
    path = write_video(tmp_path / "big.avi", "avi", "mpeg4", width=640, height=480, frames=10)
    capped = SandboxedSampler(timeout_s=30, memory_bytes=4 << 30, max_pixels=320 * 240)
    try:
        assert reason_of(lambda: capped.sample(path, 4)) == "video_dimensions_too_large"
        assert capped.sample(write_video(tmp_path / "small.avi", "avi", "mpeg4"), 4).frames.shape[0] == 4
    finally:
        capped.close()


def test_a_long_video_is_refused(tmp_path):
    short_cap = SandboxedSampler(timeout_s=30, memory_bytes=4 << 30, max_duration_s=2.0)
    try:
        assert reason_of(lambda: short_cap.sample(sample_video("bikes.mp4"), 4)) == "video_too_long"
    finally:
        short_cap.close()


def test_a_decode_past_its_deadline_is_killed_and_the_next_one_works():
    sampler = SandboxedSampler(timeout_s=0.05, memory_bytes=4 << 30)
    try:
        started = time.monotonic()
        assert reason_of(lambda: sampler.sample(sample_video("bigbuckbunny.mp4"), 32)) == "timeout"
        assert time.monotonic() - started < 2.0
        sampler.timeout_s = 60
        assert sampler.sample(sample_video("carphone_pristine.mp4"), 4).frames.shape[0] == 4
    finally:
        sampler.close()


def test_a_decoder_over_its_memory_cap_costs_one_event():
    # 32 frames of 720p need about 100 MiB of address space on top of what the child maps
    # at start (it streams them out one at a time); 64 MiB is not enough
    sampler = SandboxedSampler(timeout_s=60, memory_bytes=64 << 20)
    try:
        reason = reason_of(lambda: sampler.sample(sample_video("bigbuckbunny.mp4"), 32))
        assert reason in ("corrupt_video", "decoder_crashed")
    finally:
        sampler.close()


def test_a_decoder_that_died_idle_is_replaced_before_it_costs_an_event():
    sampler = SandboxedSampler(timeout_s=60, memory_bytes=4 << 30)
    try:
        sampler.sample(sample_video("carphone_pristine.mp4"), 4)
        child = sampler._idle.get_nowait()  # the idle child, killed as a crash would
        child.proc.kill()
        child.proc.wait()
        sampler._idle.put(child)
        assert sampler.sample(sample_video("carphone_pristine.mp4"), 4).frames.shape[0] == 4
        assert sampler._idle.get_nowait().proc.pid != child.proc.pid
    finally:
        sampler.close()


def test_a_decoder_that_dies_mid_video_costs_that_event_only():
    sampler = SandboxedSampler(timeout_s=60, memory_bytes=4 << 30)
    try:
        sampler.sample(sample_video("carphone_pristine.mp4"), 4)
        child = sampler._idle.get_nowait()
        os.kill(child.proc.pid, signal.SIGSTOP)  # alive and quiet, so it is handed the video...
        sampler._idle.put(child)
        killer = threading.Timer(0.5, child.proc.kill)  # ...and dies before it answers
        killer.start()
        try:
            assert reason_of(lambda: sampler.sample(sample_video("carphone_pristine.mp4"), 4)) \
                == "decoder_crashed"
        finally:
            killer.join()
        assert sampler.sample(sample_video("carphone_pristine.mp4"), 4).frames.shape[0] == 4
    finally:
        sampler.close()


def test_decoder_samples_evenly_with_timestamps(sandbox):
    sampled = sandbox.sample(sample_video("bikes.mp4"), 32)
    assert sampled.frame_count == 250 and sampled.fps == pytest.approx(25.0)
    assert len(sampled.indices) == 32 and sampled.indices[-1] == 249
    assert sampled.timestamps_s[1] == pytest.approx(sampled.indices[1] / 25.0, abs=0.05)


def test_decoder_asked_for_more_frames_than_the_video_has(sandbox):
    assert sandbox.sample(sample_video("carphone_pristine.mp4"), 500).indices == tuple(range(120))


def test_sampled_frames_move_to_keyframes_within_reach_and_are_those_frames():
    path = sample_video("bikes.mp4")  # 250 frames, keyframes 0, 30, 76, 137, 187, 242
    reader = decord.VideoReader(str(path))
    keyframes = [int(i) for i in reader.get_key_indices()]
    sampler = SandboxedSampler(timeout_s=60, memory_bytes=4 << 30, frame_slack=0.5)
    try:
        sampled = sampler.sample(path, 8)
    finally:
        sampler.close()
    assert list(sampled.indices) == choose_frames(250, 8, 0.5, keyframes)
    assert len(set(sampled.indices) & set(keyframes)) >= 5
    assert sampled.indices != tuple(even_frames(250, 8))
    # each moved frame is the frame at its index, decoded the plain way, with its own time
    assert np.array_equal(sampled.frames, reader.get_batch(list(sampled.indices)).asnumpy())
    assert sampled.timestamps_s == pytest.approx([i / 25.0 for i in sampled.indices], abs=0.05)


def test_the_sandbox_hands_over_large_frames_intact():
    path = sample_video("bigbuckbunny.mp4")  # 1280x720: 22 MB for 8 frames, many pipe-fulls
    sandboxed = SandboxedSampler(timeout_s=60, memory_bytes=4 << 30)
    try:
        through_pipe = sandboxed.sample(path, 8)
    finally:
        sandboxed.close()
    in_process = DecordSampler().sample(path, 8)
    assert through_pipe.frames.shape == (8, 720, 1280, 3)
    assert np.array_equal(through_pipe.frames, in_process.frames)


# --- the score command ----------------------------------------------------------------------

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


def test_score_command_refuses_a_uri_no_upload_event_may_name():
    """As the worker would dead-letter such an event: one line and exit 2, no traceback."""
    result = subprocess.run([sys.executable, "-m", "worker", "score", "gopher://127.0.0.1/x"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    answer = json.loads(result.stdout)
    assert answer["dead_letter"] == "schema_violation" and "video_uri" in answer["message"]
