"""One upload event to one verdict, through the pipeline's ports filled with fakes."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from worker.core.aggregation import Aggregation
from worker.core.calibration import Calibration
from worker.core.credentials import Credentials
from worker.core.dead_letters import DeadLetter
from worker.core.events import parse_upload_event
from worker.core.policy import Declaration, Label, Policy, policy_version
from worker.testing.fakes import CALIBRATED_FAKE_MODEL, UNCALIBRATED_FAKE_MODEL, FakeClassifier, FakeDetector, FakeSampler

from .conftest import FACE


class FakeClock:
    """Returns the given times in order; one call too many fails the test."""

    def __init__(self, *times: float):
        self.times = list(times)

    def __call__(self) -> float:
        assert self.times, "the pipeline read the clock more often than expected"
        return self.times.pop(0)


@pytest.fixture
def event(make_event):
    return parse_upload_event(make_event("vid-a", "file:///videos/a.mp4"), 1 << 20)


def test_a_faked_face_is_a_takedown_with_its_evidence(make_pipeline, event):
    sampler = FakeSampler(frame_count=100, fps=25.0)
    classifier = FakeClassifier(lambda pos, box: 0.95)
    verdict = make_pipeline(sampler=sampler, classifier=classifier, frames_per_video=5).process(event)

    expected = sampler.sample(Path("/videos/a.mp4"), 5)
    assert (verdict.decision, verdict.reasons) == ("takedown", ("score_at_or_above_takedown_threshold",))
    assert verdict.video_score == pytest.approx(0.95)
    assert verdict.frames_sampled == 5 and verdict.face_count == 5
    assert len(verdict.tracks) == 1
    detections = verdict.tracks[0].detections
    assert [d.frame_index for d in detections] == list(expected.indices) == [0, 24, 49, 74, 99]
    assert [d.timestamp_s for d in detections] == pytest.approx([i / 25 for i in expected.indices])
    assert all(d.box == FACE and d.confidence == 0.99 and d.score == 0.95 for d in detections)
    assert verdict.model == classifier.info
    assert verdict.policy_version == policy_version(Policy(), classifier.info.calibration)
    assert verdict.raw_video_score == pytest.approx(0.95) and verdict.decisive_track_id == 0
    assert verdict.event is event
    assert classifier.calls == 1  # every face of the video in one call


def test_each_detection_keeps_the_score_of_its_own_frame(make_pipeline, event):
    per_position = [0.1, 0.2, 0.3, 0.4, 0.95]
    classifier = FakeClassifier(lambda pos, box: per_position[pos])
    verdict = make_pipeline(classifier=classifier, frames_per_video=5).process(event)
    assert [d.score for d in verdict.tracks[0].detections] == per_position
    assert verdict.tracks[0].score == pytest.approx(0.39)
    assert (verdict.decision, verdict.video_score) == ("allow", pytest.approx(0.39))


def test_one_faked_face_among_real_ones_is_a_takedown(make_pipeline, event):
    real, fake = (0.0, 0.0, 20.0, 20.0), (40.0, 40.0, 60.0, 60.0)
    classifier = FakeClassifier(lambda pos, box: 0.97 if box == fake else 0.02)
    verdict = make_pipeline(detector=FakeDetector([real, fake]), classifier=classifier).process(event)
    assert sorted(t.score for t in verdict.tracks) == pytest.approx([0.02, 0.97])
    assert verdict.decision == "takedown" and verdict.face_count == 10


def test_no_faces_is_allowed_without_calling_the_classifier(make_pipeline, event):
    classifier = FakeClassifier(lambda pos, box: 1.0)
    verdict = make_pipeline(detector=FakeDetector([]), classifier=classifier).process(event)
    assert (verdict.decision, verdict.reasons, verdict.video_score) == ("allow", ("no_faces_detected",), None)
    assert verdict.tracks == () and verdict.face_count == 0
    assert classifier.calls == 0
    assert "classify" not in verdict.stage_seconds


def test_without_a_classifier_faces_go_to_review(make_pipeline, event):
    verdict = make_pipeline(classifier=None).process(event)
    assert (verdict.decision, verdict.reasons, verdict.video_score) == ("review", ("no_model_checkpoint",), None)
    assert verdict.model is None
    assert all(d.score is None for t in verdict.tracks for d in t.detections)
    assert verdict.face_count == 5


def test_a_fetch_dead_letter_propagates(make_pipeline, event):
    failure = DeadLetter("video_truncated", "the upload stopped half way")
    pipeline = make_pipeline(table={"file:///videos/a.mp4": failure})
    with pytest.raises(DeadLetter) as info:
        pipeline.process(event)
    assert info.value is failure


def test_an_unknown_video_is_not_found(make_pipeline, event):
    with pytest.raises(DeadLetter) as info:
        make_pipeline(table={}).process(event)
    assert info.value.reason == "video_not_found"


def test_a_video_without_frames_is_a_dead_letter(make_pipeline, event):
    with pytest.raises(DeadLetter) as info:
        make_pipeline(sampler=FakeSampler(frame_count=0)).process(event)
    assert info.value.reason == "no_frames"


def test_every_stage_is_timed(make_pipeline, event):
    clock = FakeClock(100.0, 100.5, 101.75, 102.0, 102.125, 103.0)
    verdict = make_pipeline(clock=clock).process(event)
    assert verdict.stage_seconds == {"fetch": 0.5, "decode": 1.25, "detect_faces": 0.25,
                                     "classify": 0.125, "processing": 3.0}
    assert clock.times == []


class RecordingReader:
    """A credentials reader that answers one record and notes the paths it was given."""

    def __init__(self, answer: Credentials):
        self.answer, self.paths = answer, []

    def read(self, path: Path) -> Credentials:
        self.paths.append(path)
        return self.answer


def test_credentials_are_read_from_the_fetched_file_and_timed(make_pipeline, event):
    reader = RecordingReader(Credentials("valid", digital_source_types=("trainedAlgorithmicMedia",)))
    clock = FakeClock(100.0, 100.5, 100.625, 101.75, 102.0, 102.125, 103.0)
    verdict = make_pipeline(clock=clock, credentials=reader).process(event)
    assert verdict.credentials is reader.answer
    assert [p.name for p in reader.paths] == ["a.mp4"]  # the fetched copy of the upload
    assert verdict.stage_seconds == {"fetch": 0.5, "credentials": 0.125, "decode": 1.125, "detect_faces": 0.25,
                                     "classify": 0.125, "processing": 3.0}
    # the faces decide the takedown, as without credentials; the credentials decide the label
    assert verdict.decision == make_pipeline().process(event).decision == "takedown"
    assert (verdict.label.status, verdict.label.basis) == ("apply", ("content_credentials", "detectors"))


def test_replace_swaps_the_named_ports_and_keeps_every_other(make_pipeline):
    reader = RecordingReader(Credentials("absent"))
    pipeline = make_pipeline(credentials=reader)
    detector = FakeDetector([])
    again = pipeline.replace(detector=detector)
    assert again.detector is detector and again.credentials is reader
    assert (again.fetcher, again.sampler, again.classifier, again.policy) == (
        pipeline.fetcher, pipeline.sampler, pipeline.classifier, pipeline.policy)
    assert pipeline.with_bank(None).credentials is reader
    with pytest.raises(TypeError, match="no port"):
        pipeline.replace(decoder=detector)


def test_the_label_comes_from_the_declaration_the_credentials_and_the_faces(make_pipeline, make_event):
    denied = parse_upload_event(make_event("vid-a", "file:///videos/a.mp4", declaration=Declaration(False)), 1 << 20)
    reader = RecordingReader(Credentials("trusted", digital_source_types=("trainedAlgorithmicMedia",)))
    low = FakeClassifier(lambda pos, box: 0.1)
    verdict = make_pipeline(classifier=low, credentials=reader).process(denied)
    assert (verdict.decision, verdict.reasons) == ("review", ("score_below_review_threshold",
                                                              "declaration_contradicted_by_credentials"))
    assert verdict.label == Label("pending_review", "ai_generated", ("content_credentials",),
                                  "declaration_contradicted_by_credentials")
    plain = parse_upload_event(make_event("vid-a", "file:///videos/a.mp4"), 1 << 20)
    verdict = make_pipeline(classifier=low).process(plain)
    assert (verdict.decision, verdict.label.status) == ("allow", "none")


def test_without_a_reader_the_verdict_has_no_credentials(make_pipeline, event):
    assert make_pipeline().process(event).credentials is None


def test_stage_times_without_classification(make_pipeline, event):
    clock = FakeClock(0.0, 1.0, 3.0, 6.0, 10.0)
    verdict = make_pipeline(detector=FakeDetector([]), clock=clock).process(event)
    assert verdict.stage_seconds == {"fetch": 1.0, "decode": 2.0, "detect_faces": 3.0, "processing": 10.0}


def test_frames_per_video_must_be_positive(make_pipeline):
    with pytest.raises(ValueError):
        make_pipeline(frames_per_video=0)


# --- the model file's aggregation, ensembles and calibration --------------------------------

def test_an_uncalibrated_model_sends_a_high_score_to_review(make_pipeline, event):
    classifier = FakeClassifier(lambda pos, box: 0.99, info=UNCALIBRATED_FAKE_MODEL)
    verdict = make_pipeline(classifier=classifier).process(event)
    assert (verdict.decision, verdict.reasons) == ("review", ("model_uncalibrated", "label_may_be_owed"))
    assert (verdict.label.status, verdict.label.basis) == ("pending_review", ("detectors",))
    assert verdict.video_score == verdict.raw_video_score == pytest.approx(0.99)
    assert verdict.policy_version == Policy().version


def test_a_calibrated_model_decides_on_the_calibrated_score(make_pipeline, event):
    calibration = Calibration("temperature", 0.97, 0.4, temperature=0.5)
    info = dataclasses.replace(CALIBRATED_FAKE_MODEL, calibration=calibration)
    verdict = make_pipeline(classifier=FakeClassifier(lambda pos, box: 0.9, info=info)).process(event)
    assert verdict.decision == "takedown"
    assert verdict.raw_video_score == pytest.approx(0.9)
    assert verdict.video_score == pytest.approx(calibration.apply(0.9))
    assert verdict.policy_version == "calibrated-v1:" + calibration.version


def test_an_ensemble_averages_its_members_track_scores(make_pipeline, event):
    info = dataclasses.replace(CALIBRATED_FAKE_MODEL, checkpoint_sha256s=("1" * 64, "2" * 64),
                               aggregation=Aggregation("max"))
    per_position = [(0.1, 0.3), (0.2, 0.9), (0.1, 0.1), (0.6, 0.2), (0.1, 0.1)]
    classifier = FakeClassifier(lambda pos, box: per_position[pos], info=info)
    verdict = make_pipeline(classifier=classifier, frames_per_video=5).process(event)
    track = verdict.tracks[0]
    assert [d.score for d in track.detections] == pytest.approx([0.2, 0.55, 0.1, 0.4, 0.1])
    assert [d.member_scores for d in track.detections] == per_position
    # member 1's max is 0.6, member 2's 0.9: the track (and the video) is their mean
    assert track.score == pytest.approx(0.75) == verdict.raw_video_score
    assert verdict.model.all_sha256s == ("1" * 64, "2" * 64)


def test_the_video_score_points_at_the_most_suspicious_track(make_pipeline, event):
    real, fake = (0.0, 0.0, 20.0, 20.0), (40.0, 40.0, 60.0, 60.0)
    classifier = FakeClassifier(lambda pos, box: 0.97 if box == fake else 0.02)
    verdict = make_pipeline(detector=FakeDetector([real, fake]), classifier=classifier).process(event)
    decisive = [t for t in verdict.tracks if t.track_id == verdict.decisive_track_id]
    assert len(decisive) == 1 and decisive[0].detections[0].box == fake


def test_confident_strategy_applies_per_track(make_pipeline, event):
    """The winner's rule over one track: 12 of 13 faces confidently fake -> their mean,
    where the plain mean would be pulled down by the one real-looking face."""
    info = dataclasses.replace(CALIBRATED_FAKE_MODEL, aggregation=Aggregation("confident_strategy", 0.8))
    scores = [0.05] + [0.95] * 12
    classifier = FakeClassifier(lambda pos, box: scores[pos], info=info)
    verdict = make_pipeline(classifier=classifier, frames_per_video=13).process(event)
    assert verdict.raw_video_score == pytest.approx(0.95)
    assert sum(scores) / 13 < 0.9  # the mean would not have been a takedown
    assert verdict.decision == "takedown"


def test_a_classifier_that_skips_a_face_is_an_error(make_pipeline, event):
    class Short(FakeClassifier):
        def score(self, frames, faces):
            return [row[:-1] for row in super().score(frames, faces)]

    with pytest.raises(ValueError, match="every face once per ensemble member"):
        make_pipeline(classifier=Short(lambda pos, box: 0.5)).process(event)
