"""The one config object: defaults, then TOML file, then environment, then --set flags."""
from __future__ import annotations

import dataclasses

import pytest

from worker.config import Config, ConfigError, load_config

SHA = "ab" * 32


@pytest.fixture
def toml(tmp_path):
    def write(text: str):
        path = tmp_path / "worker.toml"
        path.write_text(text)
        return path
    return write


def test_defaults():
    cfg = load_config(env={})
    assert cfg == Config()
    assert (cfg.kafka.bootstrap_servers, cfg.kafka.group_id) == ("localhost:9092", "deepfake-moderation")
    assert (cfg.kafka.upload_topic, cfg.kafka.verdict_topic, cfg.kafka.dead_letter_topic) == (
        "uploads.v1", "verdicts.v1", "uploads.v1.dead-letter")
    assert cfg.kafka.max_event_bytes == 256 * 1024
    assert (cfg.policy.takedown_threshold, cfg.policy.review_threshold) == (0.9, 0.5)
    assert (cfg.model.config, cfg.model.device, cfg.model.batch_size) == ("", "auto", 32)
    assert cfg.media.file_roots == ()
    assert cfg.worker.id


def test_the_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().kafka.group_id = "other"


def test_file_then_env_then_flag(toml):
    path = toml('[kafka]\ngroup_id = "from-file"\nclient_id = "file-client"\n'
                '[policy]\ntakedown_threshold = 0.95\n')
    env = {"MODERATION_KAFKA_GROUP_ID": "from-env", "UNRELATED": "x"}
    flag = ["kafka.group_id=from-flag"]

    assert load_config(path, env={}).kafka.group_id == "from-file"
    from_env = load_config(path, env=env)
    assert (from_env.kafka.group_id, from_env.kafka.client_id) == ("from-env", "file-client")
    from_flag = load_config(path, env=env, overrides=flag)
    assert (from_flag.kafka.group_id, from_flag.kafka.client_id) == ("from-flag", "file-client")
    assert from_flag.policy.takedown_threshold == 0.95
    assert load_config(None, env=env, overrides=flag).kafka.group_id == "from-flag"


def test_a_later_flag_wins():
    cfg = load_config(env={}, overrides=["kafka.group_id=a", "kafka.group_id=b"])
    assert cfg.kafka.group_id == "b"


def test_environment_values_are_coerced():
    cfg = load_config(env={
        "MODERATION_KAFKA_MAX_POLL_RECORDS": "16",
        "MODERATION_KAFKA_PUBLISH_TIMEOUT_S": "2.5",
        "MODERATION_POLICY_REVIEW_THRESHOLD": "0.25",
        "MODERATION_MEDIA_FILE_ROOTS": "/srv/uploads, /mnt/videos,,",
    })
    assert cfg.kafka.max_poll_records == 16 and isinstance(cfg.kafka.max_poll_records, int)
    assert cfg.kafka.publish_timeout_s == 2.5 and isinstance(cfg.kafka.publish_timeout_s, float)
    assert cfg.policy.review_threshold == 0.25
    assert cfg.media.file_roots == ("/srv/uploads", "/mnt/videos")


def test_flags_and_file_values_are_coerced(toml):
    path = toml('[media]\nfile_roots = ["/a", "/b"]\nfetch_timeout_s = 5\n')
    cfg = load_config(path, env={}, overrides=["media.frames_per_video=8", "faces.min_confidence=0.75"])
    assert cfg.media.file_roots == ("/a", "/b")
    assert cfg.media.fetch_timeout_s == 5.0 and isinstance(cfg.media.fetch_timeout_s, float)
    assert cfg.media.frames_per_video == 8 and isinstance(cfg.media.frames_per_video, int)
    assert cfg.faces.min_confidence == 0.75


@pytest.mark.parametrize("override", ["media.frames_per_video=many", "policy.review_threshold=half",
                                      "kafka.max_event_bytes=1.5"])
def test_values_that_cannot_be_coerced(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(env={}, overrides=[override])


@pytest.mark.parametrize("override", ["worker.device_call_deadline_s=0", "worker.stall_after_s=-1",
                                      "worker.latency_window_s=0", "worker.clock_skew_s=-5"])
def test_liveness_and_latency_bounds_must_make_sense(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(env={}, overrides=[override])


def test_env_values_that_cannot_be_coerced():
    with pytest.raises(ConfigError, match="kafka.max_poll_records"):
        load_config(env={"MODERATION_KAFKA_MAX_POLL_RECORDS": "lots"})


@pytest.mark.parametrize("text,match", [
    ('[kafka]\ngroup_idd = "typo"\n', "group_idd"),
    ('[kafak]\ngroup_id = "typo"\n', "kafak"),
    ('top_level = 1\n', "top_level"),
], ids=["key", "section", "top-level-key"])
def test_unknown_keys_and_sections_in_the_file(toml, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(toml(text), env={})


@pytest.mark.parametrize("override", ["kafka.nope=1", "nope.group_id=1", "kafka.group_id", "group_id=x"])
def test_bad_flags(override):
    with pytest.raises(ConfigError):
        load_config(env={}, overrides=[override])


@pytest.mark.parametrize("text", ['kafka = "localhost:9092"\n', "kafka = 1\n"], ids=["string", "number"])
def test_a_section_that_is_not_a_table_is_a_config_error(toml, text):
    with pytest.raises(ConfigError):
        load_config(toml(text), env={})


def test_a_list_for_a_string_key_is_not_silently_stringified(toml):
    # kafka_io splits bootstrap_servers on commas; "['a:9092', 'b:9092']" would be two bad hosts
    with pytest.raises(ConfigError, match="bootstrap_servers"):
        load_config(toml('[kafka]\nbootstrap_servers = ["a:9092", "b:9092"]\n'), env={})


def test_a_missing_or_broken_file(tmp_path, toml):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml", env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(toml("[kafka\n"), env={})


def test_the_model_is_named_by_its_model_file():
    cfg = load_config(env={"MODERATION_MODEL_CONFIG": "/models/dfdc.toml"},
                      overrides=["model.batch_size=128", "model.device=cuda"])
    assert (cfg.model.config, cfg.model.batch_size, cfg.model.device) == ("/models/dfdc.toml", 128, "cuda")


@pytest.mark.parametrize("key", ["checkpoint=/models/b0.pt", f"checkpoint_sha256={SHA}",
                                 "architecture=efficientnet_b0", "input_size=224"])
def test_the_old_model_keys_point_at_the_model_file(key):
    with pytest.raises(ConfigError, match=r"moved to the model file: set model\.config"):
        load_config(env={}, overrides=[f"model.{key}"])


@pytest.mark.parametrize("takedown,review", [("0.5", "0.9"), ("1.5", "0.5"), ("0.9", "-0.1"), ("nan", "0.5")])
def test_bad_thresholds(takedown, review):
    with pytest.raises(ConfigError, match="threshold"):
        load_config(env={}, overrides=[f"policy.takedown_threshold={takedown}",
                                       f"policy.review_threshold={review}"])


@pytest.mark.parametrize("override", ["media.frames_per_video=0", "media.max_video_bytes=0",
                                      "model.device=tpu", "model.batch_size=0",
                                      "media.frame_slack=0.6", "media.frame_slack=-0.1",
                                      "faces.batch_across_videos=sometimes", "model.precision=fp16"])
def test_other_invalid_values(override):
    with pytest.raises(ConfigError):
        load_config(env={}, overrides=[override])


def test_model_device_accepts_a_cuda_index():
    assert load_config(env={}, overrides=["model.device=cuda:1"]).model.device == "cuda:1"


def test_replace_validates_and_keeps_the_rest():
    cfg = Config().replace(kafka={"group_id": "g"}, policy={"review_threshold": "0.3"})
    assert (cfg.kafka.group_id, cfg.kafka.upload_topic, cfg.policy.review_threshold) == ("g", "uploads.v1", 0.3)
    with pytest.raises(ConfigError):
        Config().replace(kafka={"nope": 1})
    with pytest.raises(ConfigError):
        Config().replace(policy={"review_threshold": 0.95})


def test_kafka_security_settings_reach_the_client():
    from worker.runtime.clients import client_options

    cfg = load_config(env={"MODERATION_KAFKA_SECURITY_PROTOCOL": "SSL",
                           "MODERATION_KAFKA_SSL_CAFILE": "/etc/kafka/ca.pem",
                           "MODERATION_KAFKA_SSL_CERTFILE": "/etc/kafka/client.pem",
                           "MODERATION_KAFKA_SSL_KEYFILE": "/etc/kafka/client.key"})
    options = client_options(cfg.kafka)
    assert options["security_protocol"] == "SSL"
    assert (options["ssl_cafile"], options["ssl_certfile"], options["ssl_keyfile"]) == (
        "/etc/kafka/ca.pem", "/etc/kafka/client.pem", "/etc/kafka/client.key")
    scram = load_config(env={}, overrides=["kafka.security_protocol=SASL_SSL",
                                           "kafka.sasl_mechanism=SCRAM-SHA-512",
                                           "kafka.sasl_username=worker", "kafka.sasl_password=s3cret"])
    options = client_options(scram.kafka)
    assert (options["sasl_mechanism"], options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "SCRAM-SHA-512", "worker", "s3cret")


@pytest.mark.parametrize("override, match", [
    ("bank.min_hash_frames=-1", "bank.min_hash_frames"),
    ("bank.hash_rate_hz=0", "bank.hash_rate_hz"),
    ("bank.entry_hash_rate_hz=0.5", "bank.entry_hash_rate_hz"),
    ("bank.entry_keep_distance=256", "bank.entry_keep_distance"),
    ("bank.entry_max_hash_frames=0", "bank.entry_max_hash_frames"),
])
def test_bank_hashing_settings_are_validated(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(env={}, overrides=[override])
    assert load_config(env={}, overrides=["bank.min_hash_frames=0", "bank.entry_keep_distance=0"])
