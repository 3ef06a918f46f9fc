"""Real MTCNN batched across videos finds what it finds one video at a time."""
from __future__ import annotations

import threading

import pytest
import torch

from worker.decoding import DecordSampler
from worker.faces import MtcnnDetector
from worker.microbatch import CrossVideoDetector
from worker.samples import sample_video

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
