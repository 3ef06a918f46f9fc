"""The v1 contracts: the schemas are valid, the examples a reader learns from are right, and
the minor versions evolve as docs/events.md says (released files frozen, every older record
valid against every newer file)."""
from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import jsonschema
import pytest

from worker.core.calibration import Calibration
from worker.core.dead_letters import DeadLetter
from worker.core.events import LATEST, SCHEMA_DIR, VERSIONS, parse_upload_event, schema_path, validator
from worker.core.credentials import Credentials
from worker.core.policy import Declaration, KnownContentMatch, Policy, decide, label, policy_version
from worker.core.tracks import Detection, FaceTrack

SCHEMAS = ("upload-event", "verdict", "dead-letter", "bank-entry", "reviewer-confirmation",
           "match-score", "legal-order", "order-status")
FIRST_IN = {"legal-order": "1.3", "order-status": "1.3"}  # records new in a minor version
EXAMPLES = SCHEMA_DIR / "examples"
VALID = sorted(EXAMPLES.glob("*.json"))          # records of version 1.0
INVALID = sorted((EXAMPLES / "invalid").glob("*.json"))
BY_VERSION = {"1.0": VALID, **{v: sorted((EXAMPLES / f"v{v}").glob("*.json")) for v in VERSIONS[1:]}}

# Each released schema file, canonical JSON's sha256: a released version never changes. A new
# minor version is a new folder, pinned here when it is released.
FROZEN = {
    "v1/bank-entry.schema.json": "b245bfa3ac611619abc315c5f52bfab9c405967aa366edd522fa0568378b62fa",
    "v1/dead-letter.schema.json": "68ee8e60c628f124205b0442c223e9abf2ff163f70ea0299f4a409da290d6ed5",
    "v1/match-score.schema.json": "e147c6117f4c2b31bc5fab08829c75444d608f78e3610fcc9d6b70ddbb6b4995",
    "v1/reviewer-confirmation.schema.json": "8f07a7cfef9f6594a26b47bfc8ccf01c575adcdc2ae38e7c599b38c162c9823d",
    "v1/upload-event.schema.json": "49c74f91423f345e6d18b44ca9e7889baad2c7e8966fc043601508dc8afe2979",
    "v1/verdict.schema.json": "40091a07e973336e21a2373c993016533d7586b63e9177e5832788bd6b86cf78",
    "v1.1/verdict.schema.json": "6b70d01822b098e224b1fa6936172cffc46f59b170bca65de828c026b6af0011",
    "v1.2/upload-event.schema.json": "ef207ccc511c6799213348465e7a5289bd9ee8651e12fab69459119af69163b7",
    "v1.2/verdict.schema.json": "bdf9ea5a30abcad2c4d020c2b3ddb942967d8bbedfb88ebba9ab8590f4ea1c25",
    "v1.3/legal-order.schema.json": "0fc4faeffe83a2ec294d82a148c5a4ca4b87fcfa6b3101f3043cf3d970ef469d",
    "v1.3/order-status.schema.json": "1d15e9efa7571bdeccb78a4396cf4c972d97e7ee8c775f83f388fafbbec949e0",
    "v1.3/verdict.schema.json": "c791865ddc85e8861f45e3710b3571ced7c2f8aa6ca370858621121833a1cb0d",
}

# Each invalid example breaks one rule: where (JSON path) and which schema keyword.
BROKEN_RULE = {
    "upload-event-missing-video-id.json": ("data", "required"),
    "upload-event-ftp-uri.json": ("data/video_uri", "pattern"),
    "upload-event-sha1-content-hash.json": ("data/content_hash", "pattern"),
    "upload-event-nested-metadata.json": ("data/metadata/tags", "type"),
    "upload-event-v2-type.json": ("type", "const"),
    "verdict-decision-delete.json": ("data/decision", "enum"),
    "verdict-model-without-checkpoint-sha256.json": ("data/model", "required"),
    "verdict-score-as-percent.json": ("data/video_score", "maximum"),
    "verdict-no-reasons.json": ("data/reasons", "minItems"),
    "dead-letter-without-original-value.json": ("data", "required"),
    "bank-entry-unknown-bank.json": ("data/bank", "enum"),
    "reviewer-confirmation-takedown-without-fingerprint.json": ("data", "anyOf"),
    "reviewer-confirmation-unknown-decision.json": ("data/decision", "enum"),
    "match-score-score-as-percent.json": ("data/video_score", "maximum"),
    "verdict-credentials-unknown-state.json": ("data/credentials/state", "enum"),
    "upload-event-declaration-kind-without-synthetic.json": ("data/declaration", "not"),
    "verdict-label-unknown-basis.json": ("data/label/basis/0", "enum"),
    "legal-order-target-with-uri-and-hash-list.json": ("data/targets/0", "oneOf"),
    "order-status-unknown-status.json": ("data/status", "enum"),
}


def schema_of(path: Path) -> str:
    names = [n for n in SCHEMAS if path.name.startswith(n)]
    assert names, f"{path.name} does not start with a schema name {SCHEMAS}"
    return max(names, key=len)


def load(path: Path):
    return json.loads(path.read_text())


def errors_of(path: Path) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator(schema_of(path)).iter_errors(load(path))]


@pytest.mark.parametrize("name", SCHEMAS)
def test_schema_is_valid_draft_2020_12(name):
    checker = validator(name)
    assert isinstance(checker, jsonschema.Draft202012Validator)
    assert checker.schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(checker.schema)


def test_every_schema_file_is_one_of_the_contracts():
    files = {p.name.removesuffix(".schema.json") for p in (SCHEMA_DIR / "v1").glob("*.schema.json")}
    assert files == set(SCHEMAS) - set(FIRST_IN)
    for name, version in FIRST_IN.items():
        assert schema_path(name, version).parent.name == f"v{version}"
        with pytest.raises(FileNotFoundError):
            schema_path(name, VERSIONS[VERSIONS.index(version) - 1])


def test_released_schema_files_never_change():
    files = sorted(SCHEMA_DIR.glob("v1*/*.schema.json"))
    assert {f"{p.parent.name}/{p.name}" for p in files} == set(FROZEN), "pin each released file in FROZEN"
    for path in files:
        canonical = json.dumps(json.loads(path.read_text()), sort_keys=True, separators=(",", ":"))
        assert hashlib.sha256(canonical.encode()).hexdigest() == FROZEN[f"{path.parent.name}/{path.name}"], (
            f"{path} changed after its release: add a new minor version instead (docs/events.md)")


def test_each_file_names_its_version_and_holds_a_known_contract():
    for path in SCHEMA_DIR.glob("v1*/*.schema.json"):
        assert path.name.removesuffix(".schema.json") in SCHEMAS
        assert load(path)["$id"] == f"https://schemas.deepfake-moderation.dev/{path.parent.name}/{path.name}"
    assert [p.name for p in sorted(SCHEMA_DIR.glob("v1*"))] == ["v1" if v == "1.0" else f"v{v}" for v in VERSIONS]


def test_a_version_without_its_own_file_is_the_version_before():
    assert schema_path("dead-letter", "1.1") == SCHEMA_DIR / "v1" / "dead-letter.schema.json"
    assert schema_path("verdict", "1.1") == SCHEMA_DIR / "v1.1" / "verdict.schema.json"
    assert schema_path("verdict", "1.0") == SCHEMA_DIR / "v1" / "verdict.schema.json"
    assert schema_path("upload-event", "1.1") == SCHEMA_DIR / "v1" / "upload-event.schema.json"
    assert schema_path("upload-event", "1.2") == SCHEMA_DIR / "v1.2" / "upload-event.schema.json"
    assert schema_path("dead-letter", "1.2") == SCHEMA_DIR / "v1" / "dead-letter.schema.json"
    assert validator("verdict").schema == validator("verdict", LATEST).schema
    assert validator("verdict", "1.0").schema != validator("verdict", "1.1").schema
    with pytest.raises(ValueError, match="unknown contract version"):
        schema_path("verdict", "2.0")


@pytest.mark.parametrize("version", VERSIONS)
def test_every_record_of_a_version_is_valid_in_it_and_every_later_one(version):
    assert BY_VERSION[version], f"version {version} has no examples"
    for path in BY_VERSION[version]:
        for later in VERSIONS[VERSIONS.index(version):]:
            errors = list(validator(schema_of(path), later).iter_errors(load(path)))
            assert errors == [], f"{path.name} against {later}: {errors[0].message}"


@pytest.mark.parametrize("version", VERSIONS[1:])
def test_a_newer_record_needs_its_version(version):
    """What makes the minor files necessary: the version before rejects the new fields."""
    before = VERSIONS[VERSIONS.index(version) - 1]
    for path in BY_VERSION[version]:
        if FIRST_IN.get(schema_of(path)) == version:  # a new record: no file before
            assert load(path)["dataschema"] == load(schema_path(schema_of(path), version))["$id"]
            continue
        error = jsonschema.exceptions.best_match(validator(schema_of(path), before).iter_errors(load(path)))
        assert error is not None and error.validator == "additionalProperties", path.name
        assert load(path)["dataschema"] == load(schema_path(schema_of(path), version))["$id"]


def test_each_contract_has_valid_and_invalid_examples():
    every_version = [p for paths in BY_VERSION.values() for p in paths]
    for name in SCHEMAS:
        assert any(schema_of(p) == name for p in every_version), name
        assert any(schema_of(p) == name for p in INVALID), name


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_example_validates(path):
    assert errors_of(path) == []


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_example_fails_for_the_rule_it_breaks(path):
    assert errors_of(path), f"{path.name} validates but is meant to fail"
    error = jsonschema.exceptions.best_match(validator(schema_of(path)).iter_errors(load(path)))
    assert ("/".join(map(str, error.absolute_path)), error.validator) == BROKEN_RULE[path.name]


def test_every_invalid_example_says_which_rule_it_breaks():
    assert {p.name for p in INVALID} == set(BROKEN_RULE)


@pytest.mark.parametrize("name", ["upload-event.json", "upload-event-minimal.json"])
def test_upload_examples_are_read_by_the_worker(name):
    raw = (EXAMPLES / name).read_bytes()
    event = parse_upload_event(raw, max_bytes=len(raw))
    assert event.video_id == load(EXAMPLES / name)["data"]["video_id"]


def test_the_v2_example_is_refused_as_an_unsupported_version():
    with pytest.raises(DeadLetter) as info:
        parse_upload_event((EXAMPLES / "invalid" / "upload-event-v2-type.json").read_bytes(), 1 << 20)
    assert info.value.reason == "unsupported_schema_version"


@pytest.mark.parametrize("path", sorted([*EXAMPLES.glob("verdict*.json"), *EXAMPLES.glob("v1.*/verdict*.json")]),
                         ids=lambda p: p.name)
def test_verdict_example_can_be_re_derived_from_its_evidence(path):
    data = load(path)["data"]
    if "legal_order" in data:  # an order's takedown: no evidence but the order (docs/orders.md)
        assert (data["decision"], data["reasons"], data["policy_version"]) == (
            "takedown", ["legal_order"], "legal-order-v1")
        assert data["tracks"] == [] and data["model"] is None and data["video_score"] is None
        return
    tracks = [FaceTrack(t["track_id"], tuple(
        Detection(d["frame_index"], d["timestamp_s"], tuple(d["box"]), d["detection_confidence"], d["score"])
        for d in t["detections"]), aggregated=t["score"]) for t in data["tracks"]]
    model = data["model"]
    calibration = None
    if model is not None and model.get("calibration") is not None:
        calibration = Calibration.from_mapping(model["calibration"])
    policy = Policy()
    assert data["policy_version"] == policy_version(policy, calibration)
    known = None
    if "known_content" in data:
        match = data["known_content"]
        known = KnownContentMatch(match["entry_id"], match["source_video_id"], match["query_match_percent"],
                                 match["entry_match_percent"], match["median_distance"])
    decision = decide(policy, tracks, model_loaded=model is not None, known=known, calibration=calibration)
    credentials = Credentials.from_json(data["credentials"]) if "credentials" in data else None
    declared = data.get("declaration")
    declaration = None if declared is None else Declaration(declared["synthetic"], declared.get("kind"),
                                                             declared.get("tool"))
    needed, decision = label(declaration, credentials, decision)
    assert (decision.decision, list(decision.reasons)) == (data["decision"], data["reasons"])
    if "label" in data:
        assert data["label"] == {"status": needed.status, "kind": needed.kind, "basis": list(needed.basis),
                                 "rule": needed.rule}
    assert decision.video_score == pytest.approx(data["video_score"], abs=1e-6)
    if "raw_video_score" in data:
        assert decision.raw_video_score == pytest.approx(data["raw_video_score"], abs=1e-6)
        assert decision.track_id == data["decisive_track_id"]
    assert data["face_count"] == sum(len(t["detections"]) for t in data["tracks"])
    for json_track in data["tracks"]:
        # Each example's aggregation is the mean of the face scores for these few faces
        # (confident_strategy only departs from it with more than 11 confident faces).
        scores = [d["score"] for d in json_track["detections"] if d["score"] is not None]
        if scores:
            assert json_track["score"] == pytest.approx(sum(scores) / len(scores), abs=1e-5)


def test_verdicts_of_workers_before_model_files_still_validate():
    """v1 stays backward compatible: the model file's fields are optional."""
    document = load(EXAMPLES / "verdict-takedown.json")
    for key in ("raw_video_score", "decisive_track_id"):
        del document["data"][key]
    for key in ("checkpoint_sha256s", "backend", "aggregation", "calibration"):
        del document["data"]["model"][key]
    assert list(validator("verdict").iter_errors(document)) == []


def test_an_ensemble_verdict_names_every_checkpoint():
    model = load(EXAMPLES / "verdict-takedown.json")["data"]["model"]
    assert len(model["checkpoint_sha256s"]) == 2 and model["checkpoint_sha256"] == model["checkpoint_sha256s"][0]
    broken = load(EXAMPLES / "verdict-takedown.json")
    broken["data"]["model"]["checkpoint_sha256s"] = ["not-a-hash"]
    assert list(validator("verdict").iter_errors(broken))


def test_the_named_verdict_examples_show_what_their_names_say():
    takedown = load(EXAMPLES / "verdict-takedown.json")["data"]
    assert takedown["decision"] == "takedown" and takedown["model"]["calibration"] is not None
    assert [len(t["detections"]) for t in takedown["tracks"]] == [2, 2]
    assert takedown["video_score"] >= takedown["model"]["calibration"]["takedown_threshold"]
    uncalibrated = load(EXAMPLES / "verdict-review-uncalibrated.json")["data"]
    assert (uncalibrated["decision"], uncalibrated["reasons"]) == ("review", ["model_uncalibrated", "label_may_be_owed"])
    assert uncalibrated["model"]["calibration"] is None
    assert uncalibrated["video_score"] == uncalibrated["raw_video_score"] >= Policy().takedown_threshold
    no_model = load(EXAMPLES / "verdict-review-no-model.json")["data"]
    assert (no_model["decision"], no_model["reasons"]) == ("review", ["no_model_checkpoint"])
    assert no_model["model"] is None and no_model["video_score"] is None
    no_faces = load(EXAMPLES / "verdict-allow-no-faces.json")["data"]
    assert (no_faces["decision"], no_faces["reasons"], no_faces["tracks"]) == (
        "allow", ["no_faces_detected"], [])


def test_dead_letter_example_keeps_bytes_that_are_not_json():
    data = load(EXAMPLES / "dead-letter.json")["data"]
    assert data["reason"] == "invalid_json"
    original = base64.b64decode(data["original_value_base64"], validate=True)
    with pytest.raises(DeadLetter) as info:
        parse_upload_event(original, 1 << 20)
    assert info.value.reason == "invalid_json"


def test_the_config_knows_every_contract_version():
    from worker.config import CONTRACT_VERSIONS
    assert CONTRACT_VERSIONS == VERSIONS
