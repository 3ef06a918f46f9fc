"""Real MTCNN batched across videos finds what it finds one video at a time."""
from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from worker.app import build_detector, torch_threads
from worker.config import FacesConfig, load_config
from worker.faces.batching import CrossVideoDetector
from worker.faces.mtcnn import MtcnnDetector
from worker.media.decoding import DecordSampler
from worker.testing.samples import sample_video

CPU = torch.device("cpu")


def test_mtcnn_batched_across_videos_returns_each_video_its_own_faces():
    carphone = DecordSampler().sample(sample_video("carphone_pristine.mp4"), 8).frames
    bikes = DecordSampler().sample(sample_video("bikes.mp4"), 3).frames
    videos = [carphone[:4], carphone[4:][:, :, ::-1].copy(), bikes]   # the 2nd mirrored; 3rd another size
    detector = MtcnnDetector(CPU, batch_size=16)
    alone = [detector.detect(v) for v in videos]
    batched = CrossVideoDetector(detector, max_batch=16, max_wait_s=2.0)
    start = threading.Barrier(len(videos))
    together: dict[int, list] = {}

    def video(i):
        start.wait()
        together[i] = batched.detect(videos[i])

    threads = [threading.Thread(target=video, args=(i,)) for i in range(len(videos))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    batched.close()
    assert batched.batcher.sizes == [11]          # one flush: 4 + 4 + 3 frames
    assert sum(len(f) for f in alone[0] + alone[1]) >= 7   # carphone: a face a frame
    for i in range(len(videos)):
        assert len(together[i]) == len(videos[i])
        for mine, reference in zip(together[i], alone[i]):
            assert len(mine) == len(reference)
            for (box, conf), (ref_box, ref_conf) in zip(mine, reference):
                assert box == pytest.approx(ref_box, abs=0.5) and conf == pytest.approx(ref_conf, abs=1e-3)


def test_on_a_cpu_each_video_calls_mtcnn_itself_unless_told_to_share():
    """Sharing MTCNN calls across videos pays on a GPU; on a CPU one call at a time leaves
    cores idle during its serial parts (bench/README.md), so auto shares on CUDA only."""
    faces = FacesConfig()
    assert faces.batch_across_videos == "auto"
    assert isinstance(build_detector(None, faces, CPU, processing_threads=3), MtcnnDetector)
    assert isinstance(build_detector(None, faces, CPU, processing_threads=1), MtcnnDetector)
    shared = build_detector(None, dataclasses.replace(faces, batch_across_videos="on"), CPU, 3)
    try:
        assert isinstance(shared, CrossVideoDetector)
    finally:
        shared.close()
    alone = build_detector(None, dataclasses.replace(faces, batch_across_videos="off"), CPU, 3)
    assert isinstance(alone, MtcnnDetector)


def test_torch_threads_are_shared_among_the_videos_in_flight_on_a_cpu():
    two = load_config(env={}, overrides=["worker.processing_threads=2"])
    assert torch_threads(two, CPU, default=2) == 1
    assert torch_threads(two, CPU, default=16) == 8
    assert torch_threads(two, torch.device("cuda"), default=16) == 16  # the GPU does the work
    assert torch_threads(load_config(env={}, overrides=[]), CPU, default=2) == 2
    assert torch_threads(load_config(env={}, overrides=["worker.processing_threads=5"]), CPU, default=2) == 1
    forced = load_config(env={}, overrides=["worker.processing_threads=2", "worker.torch_threads=3"])
    assert torch_threads(forced, CPU, default=2) == 3
