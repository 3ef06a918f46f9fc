"""The hash bank through the real broker: a takedown on one worker is matched by another
worker within seconds, with no restart and no model on the second worker."""
from __future__ import annotations

import time

import pytest

from worker.samples import sample_video

from .conftest import publish, read_outputs, running_worker
from .test_bank_variants import build_variant, decode_all
from .test_kafka_roundtrip import _event

pytestmark = pytest.mark.kafka


def test_a_takedown_on_one_worker_catches_a_re_upload_on_another(kafka_config, pipeline_with_model,
                                                               pipeline_without_model, tmp_path):
    source = sample_video("carphone_pristine.mp4")
    frames, rate = decode_all(source)
    reupload = build_variant(source, frames, rate, "half", tmp_path)  # scaled to half size
    first = kafka_config
    second = first.replace(kafka={"group_id": first.kafka.group_id + "-second",
                                  "upload_topic": first.kafka.upload_topic + "-second",
                                  "verdict_topic": first.kafka.verdict_topic + "-second",
                                  "dead_letter_topic": first.kafka.dead_letter_topic + "-second"},
                           worker={"id": "second-worker"})
    from worker.kafka_io import ensure_topics
    ensure_topics(second.kafka, bank_topic=second.bank.topic)

    # The second worker has no model: only the bank can make it recommend a takedown.
    with running_worker(second, pipeline_without_model), running_worker(first, pipeline_with_model):
        publish(first, [_event("original", source)])
        [(_, _, original)] = read_outputs(first, expected=1, settle_s=0)
        assert original["data"]["reasons"] == ["score_at_or_above_takedown_threshold"]
        taken_down = time.monotonic()
        publish(second, [_event("reupload", reupload), _event("unrelated", sample_video("bikes.mp4"))])
        outputs = read_outputs(second, expected=2, settle_s=0)
        caught_after = time.monotonic() - taken_down

    verdicts = {r["data"]["video_id"]: r["data"] for _, _, r in outputs}
    caught = verdicts["reupload"]
    assert (caught["decision"], caught["reasons"]) == ("takedown", ["known_content_match"])
    assert caught["model"] is None and caught["tracks"] == []  # no model ran
    match = caught["known_content"]
    assert match["source_video_id"] == "original"
    assert match["entry_match_percent"] >= 80 and match["query_match_percent"] > 0
    assert 0 <= match["median_distance"] <= 31
    assert verdicts["unrelated"]["reasons"] != ["known_content_match"]
    assert caught["fingerprint_vpdq"].count("\n") >= 3  # about one hashed frame a second
    assert caught_after < 60
