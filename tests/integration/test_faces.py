"""The worker's MTCNN adapter gives facenet-pytorch's boxes. The frames' layout in memory
changes nothing, bit for bit; running RNet and ONet on ``channels_last`` (on a CPU) changes
only the order of the convolutions' sums, so boxes and probabilities stay within float
rounding of the stock ones and the faces are the same."""
import cv2
import numpy as np
import pytest
import torch  # before decord: see docs/runtime.md, "Pitfalls"
import decord
from facenet_pytorch import MTCNN

from worker.faces.mtcnn import ChannelsLastInput, MtcnnDetector
from worker.testing.samples import sample_video

CPU = torch.device("cpu")
THRESHOLDS = (0.7, 0.8, 0.8)  # the DFDC winner's, as the bench model file says


def sampled(name: str, upscale: int = 1) -> np.ndarray:
    reader = decord.VideoReader(str(sample_video(name)))
    frames = reader.get_batch(list(range(0, len(reader), len(reader) // 8))[:8]).asnumpy()
    if upscale == 1:
        return frames
    height, width = frames.shape[1:3]
    return np.stack([cv2.resize(f, (width * upscale, height * upscale), interpolation=cv2.INTER_CUBIC)
                     for f in frames])


def stock_faces(frames: np.ndarray, scale: float, *, channels_last_rnet_onet: bool = False
                ) -> list[list[tuple[tuple[float, ...], float]]]:
    """facenet-pytorch's MTCNN called the plain way, on the same downscaled frames, its boxes
    scaled back and clipped to the frame as the adapter reports them. With
    ``channels_last_rnet_onet`` its RNet and ONet get the layout the adapter gives them on a
    CPU, so that what is left to compare is the frames' layout."""
    mtcnn = MTCNN(keep_all=True, device=CPU, thresholds=list(THRESHOLDS), post_process=False)
    if channels_last_rnet_onet:
        mtcnn.rnet, mtcnn.onet = ChannelsLastInput(mtcnn.rnet), ChannelsLastInput(mtcnn.onet)
    small = MtcnnDetector.downscale(frames, scale) if scale < 1 else frames
    boxes, probs = mtcnn.detect(torch.from_numpy(small))
    height, width = frames.shape[1:3]
    out = []
    for frame_boxes, frame_probs in zip(boxes, probs):
        faces = []
        for box, prob in zip(frame_boxes if frame_boxes is not None else [], frame_probs):
            x1, y1, x2, y2 = (float(c) / scale for c in box)
            faces.append(((max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)),
                          float(prob)))
        out.append(faces)
    return out


@pytest.mark.parametrize("name, upscale, scale", [
    ("carphone_pristine.mp4", 1, 1.0),
    ("carphone_pristine.mp4", 4, 0.5),   # 704x576, halved as the DFDC settings say
    ("bikes.mp4", 1, 0.5),
])
def test_the_frames_layout_leaves_the_stock_mtcnns_boxes_bit_for_bit(name, upscale, scale):
    frames = sampled(name, upscale)
    detector = MtcnnDetector(CPU, thresholds=THRESHOLDS, min_confidence=0.0, scale=scale)
    ours = detector.detect(frames)
    assert ours == stock_faces(frames, scale, channels_last_rnet_onet=True)
    if name.startswith("carphone"):
        assert sum(len(f) for f in ours) >= 7  # a real face in every frame


@pytest.mark.parametrize("name, upscale, scale", [
    ("carphone_pristine.mp4", 1, 1.0),
    ("carphone_pristine.mp4", 4, 0.5),
    ("bikes.mp4", 1, 0.5),
    ("bigbuckbunny.mp4", 1, 0.5),
])
def test_the_adapter_finds_the_stock_mtcnns_faces_within_float_rounding(name, upscale, scale):
    frames = sampled(name, upscale)
    detector = MtcnnDetector(CPU, thresholds=THRESHOLDS, min_confidence=0.0, scale=scale)
    ours, stock = detector.detect(frames), stock_faces(frames, scale)
    assert [len(f) for f in ours] == [len(f) for f in stock]
    assert sum(len(f) for f in ours) > 0
    for our_frame, stock_frame in zip(ours, stock):
        for (box, prob), (stock_box, stock_prob) in zip(our_frame, stock_frame):
            assert np.abs(np.subtract(box, stock_box)).max() < 0.01  # pixels
            assert abs(prob - stock_prob) < 1e-4
    assert isinstance(detector._mtcnn.rnet, ChannelsLastInput)  # the other layout was used
    assert isinstance(detector._mtcnn.onet, ChannelsLastInput)


def test_downscale_is_a_two_by_two_mean_when_halving():
    frames = np.random.default_rng(3).integers(0, 256, (2, 6, 8, 3), dtype=np.uint8)
    half = MtcnnDetector.downscale(frames, 0.5)
    blocks = frames.reshape(2, 3, 2, 4, 2, 3).astype(np.float64).mean(axis=(2, 4))
    assert half.shape == (2, 3, 4, 3)
    assert np.abs(half.astype(np.float64) - blocks).max() <= 0.5


def test_the_trainers_landmark_detector_finds_the_workers_boxes_bit_for_bit():
    from worker.training.dataset import DetectionSettings, LandmarkDetector

    frames = sampled("carphone_pristine.mp4", 4)
    settings = DetectionSettings(detector_scale=0.5, detector_thresholds=THRESHOLDS, min_confidence=0.9)
    worker = MtcnnDetector(CPU, thresholds=THRESHOLDS, min_confidence=0.9, scale=0.5).detect(frames)
    trainer = LandmarkDetector(settings, CPU).detect(frames)
    assert sum(map(len, worker)) >= 7
    assert [[box for box, _ in f] for f in worker] == [[tuple(float(c) for c in box) for box, _ in f]
                                                      for f in trainer]
