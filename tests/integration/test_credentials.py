"""Content credentials read from real signed MP4s: made here with c2pa-python and a throwaway
CA (worker.testing.credentials), read by the worker's sandboxed reader (a real child
running c2pa-python). Each case's record is asserted field by field."""
from __future__ import annotations

import http.server
import json
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from worker.app import build_pipeline
from worker.core import credentials as cr
from worker.core.credentials import Credentials, Signer
from worker.core.events import upload_event, validator
from worker.core.policy import Decision, Declaration, Label, label
from worker.media.decoding import DecordSampler
from worker.media.limits import DecodeLimits
from worker.provenance.sandbox import CredentialReader, ReaderSettings
from worker.provenance.store import C2PA_UUID
from worker.testing.credentials import sign_video
from worker.testing.samples import sample_video
from worker.testing.tls import CertificateAuthority

from .conftest import publish, read_outputs, running_worker

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder, "c2pa-test", organization="Test Trust Services")
    other = CertificateAuthority(folder, "elsewhere", organization="Someone Else")
    return {
        "ca": ca.cert_path,
        "signer": ca.issue("Generator Signing Key", signing=True, organization="Example Generator Ltd"),
        "stranger": other.issue("Stranger Key", signing=True, organization="Unknown Studio"),
    }


@pytest.fixture(scope="module")
def videos(pki, tmp_path_factory):
    folder = tmp_path_factory.mktemp("signed")
    source = sample_video("carphone_pristine.mp4")
    made = {
        "ai_generated": sign_video(source, folder / "ai.mp4", pki["signer"], "trainedAlgorithmicMedia",
                                   generator="ExampleGen"),
        "ai_composite": sign_video(source, folder / "composite.mp4", pki["signer"],
                                   "compositeWithTrainedAlgorithmicMedia", ingredients=2, generator="ExampleEditor"),
        # C2PA 2.x: an edit needs the parent it edits (an opened action and a parentOf ingredient)
        "orphan_edit": sign_video(source, folder / "orphan-edit.mp4", pki["signer"],
                                  "compositeWithTrainedAlgorithmicMedia", action="c2pa.edited"),
        "camera": sign_video(source, folder / "camera.mp4", pki["signer"], "digitalCapture", generator="ExampleCam"),
        "stranger": sign_video(source, folder / "stranger.mp4", pki["stranger"], "trainedAlgorithmicMedia",
                               generator="ExampleGen"),
    }
    made["changed"] = _changed_after_signing(made["ai_generated"], folder / "changed.mp4")
    made["cut"] = _store_cut_short(made["ai_generated"], folder / "cut.mp4")
    made["absurd"] = _absurd_jumbf_size(made["ai_generated"], folder / "absurd.mp4")
    return made


def _boxes(data: bytes):
    offset = 0
    while offset < len(data):
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        yield kind, offset, size
        offset += size


def _store(data: bytes) -> tuple[int, int]:
    for kind, offset, size in _boxes(data):
        if kind == b"uuid" and data[offset + 8:offset + 24] == C2PA_UUID:
            return offset, size
    raise AssertionError("no C2PA box")


def _changed_after_signing(signed: Path, dest: Path) -> Path:
    data = bytearray(signed.read_bytes())
    for kind, offset, size in _boxes(bytes(data)):
        if kind == b"mdat":
            data[offset + size // 2] ^= 0xFF
    dest.write_bytes(data)
    return dest


def _store_cut_short(signed: Path, dest: Path) -> Path:
    """The store's box keeps its first half; a free box fills the rest, so the video's own
    offsets (and its decoding) are untouched."""
    data = signed.read_bytes()
    offset, size = _store(data)
    kept = size // 2
    box = struct.pack(">I", kept) + data[offset + 4:offset + kept]
    filler = struct.pack(">I4s", size - kept, b"free") + b"\x00" * (size - kept - 8)
    dest.write_bytes(data[:offset] + box + filler + data[offset + size:])
    return dest


def _absurd_jumbf_size(signed: Path, dest: Path) -> Path:
    """The store's JUMBF description box claims 2 GiB (c2pa-rs reads the outer superbox to its
    box's end whatever size it claims, so the description box is the one to break)."""
    data = bytearray(signed.read_bytes())
    offset, size = _store(bytes(data))
    description = data.index(b"jumd", offset, offset + size)
    data[description - 4:description] = struct.pack(">I", 0x7FFFFFF0)
    dest.write_bytes(data)
    return dest


def read(path: Path, anchors: Path | None = None, **settings) -> Credentials:
    reader = CredentialReader(ReaderSettings(trust_anchors=str(anchors or ""), **settings))
    try:
        return reader.read(path)
    finally:
        reader.close()


SIGNER = Signer(issuer="Example Generator Ltd", common_name="Generator Signing Key", signing_time=None)
LOW_SCORE = Decision("allow", ("score_below_review_threshold",), 0.1)
NO_LABEL = Label("none", None, (), None)


def labels_of(credentials: Credentials) -> tuple[Label, Label]:
    """The label these credentials lead to, undeclared and declared not synthetic, with the
    faces scored low (the credentials alone speak)."""
    return (label(None, credentials, LOW_SCORE)[0], label(Declaration(False), credentials, LOW_SCORE)[0])


def credential_labels(kind: str | None) -> tuple[Label, Label]:
    if kind is None:
        return NO_LABEL, NO_LABEL
    return (Label("apply", kind, ("content_credentials",), "credentials_say_synthetic"),
            Label("pending_review", kind, ("content_credentials",), "declaration_contradicted_by_credentials"))


@pytest.mark.parametrize("anchored", [False, True], ids=["no-anchors", "ca-anchor"])
@pytest.mark.parametrize("name, generator, source_type, ingredients, synthetic", [
    ("ai_generated", "ExampleGen 1.0", "trainedAlgorithmicMedia", 0, cr.AI_GENERATED),
    ("ai_composite", "ExampleEditor 1.0", "compositeWithTrainedAlgorithmicMedia", 2, cr.AI_ALTERED),
    ("camera", "ExampleCam 1.0", "digitalCapture", 0, None),
])
def test_signed_video_is_valid_without_anchors_and_trusted_with_its_ca(
        videos, pki, anchored, name, generator, source_type, ingredients, synthetic):
    got = read(videos[name], pki["ca"] if anchored else None)
    assert got == Credentials(
        state=cr.TRUSTED if anchored else cr.VALID, claim_generator=generator, signer=SIGNER,
        digital_source_types=(source_type,), ingredient_count=ingredients,
        manifest_bytes=_store(videos[name].read_bytes())[1])
    assert got.synthetic == synthetic
    assert labels_of(got) == credential_labels(synthetic)


def test_a_signer_outside_the_anchors_is_valid_not_trusted(videos, pki):
    got = read(videos["stranger"], pki["ca"])
    assert got.state == cr.VALID
    assert got.signer == Signer(issuer="Unknown Studio", common_name="Stranger Key")
    assert got.validation_codes == ("signingCredential.untrusted",)
    assert got.synthetic == cr.AI_GENERATED
    assert labels_of(got) == credential_labels(cr.AI_GENERATED)


def test_no_credentials_is_absent():
    assert read(sample_video("carphone_pristine.mp4")) == Credentials(cr.ABSENT)
    assert read(sample_video("bikes.mp4")) == Credentials(cr.ABSENT)
    assert labels_of(Credentials(cr.ABSENT)) == (NO_LABEL, NO_LABEL)


@pytest.mark.parametrize("anchored", [False, True])
def test_a_file_changed_after_signing_is_invalid_and_declares_nothing(videos, pki, anchored):
    got = read(videos["changed"], pki["ca"] if anchored else None)
    assert got.state == cr.INVALID
    assert "assertion.bmffHash.mismatch" in got.validation_codes
    assert got.digital_source_types == ("trainedAlgorithmicMedia",)  # reported, never believed
    assert got.synthetic is None and not got.believed
    assert labels_of(got) == (NO_LABEL, NO_LABEL)  # tampered: as if there were none


def test_the_validator_s_own_rules_make_a_manifest_invalid(videos, pki):
    got = read(videos["orphan_edit"], pki["ca"])
    assert got.state == cr.INVALID
    assert got.validation_codes == ("assertion.action.malformed",)
    assert got.synthetic is None
    assert labels_of(got) == (NO_LABEL, NO_LABEL)


@pytest.mark.parametrize("name", ["cut", "absurd"])
def test_a_broken_store_is_unreadable_and_the_video_still_decodes(videos, name):
    got = read(videos[name])
    assert (got.state, got.reason) == (cr.UNREADABLE, cr.MANIFEST_MALFORMED)
    assert got.message and got.synthetic is None
    assert labels_of(got) == (NO_LABEL, NO_LABEL)
    frames = DecordSampler(DecodeLimits()).sample(videos[name], 4).frames
    assert frames.shape[0] == 4


def test_a_store_over_the_cap_is_not_parsed(videos):
    size = _store(videos["ai_generated"].read_bytes())[1]
    got = read(videos["ai_generated"], max_manifest_bytes=size - 1)
    assert (got.state, got.reason, got.manifest_bytes) == (cr.UNREADABLE, cr.MANIFEST_TOO_LARGE, size)


def test_the_reader_runs_under_its_memory_cap(videos):
    got = read(videos["ai_generated"], memory_bytes=64 * 1024)  # reading this file needs more
    assert got.state == cr.UNREADABLE
    assert got.reason in (cr.READER_OUT_OF_MEMORY, cr.READER_CRASHED)


def test_a_remote_manifest_is_refused_and_never_fetched(pki, tmp_path):
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/manifests/upload.c2pa"
        path = sign_video(sample_video("carphone_pristine.mp4"), tmp_path / "remote.mp4", pki["signer"],
                          remote_url=url)
        got = read(path, pki["ca"])
    finally:
        server.shutdown()
    assert got == cr.unreadable(cr.REMOTE_MANIFEST_REFUSED, "the manifest is remote; not fetched", remote_url=url)
    assert requests == []


def test_cli_prints_the_record(videos, pki):
    done = subprocess.run(
        [sys.executable, "-m", "worker", "credentials", str(videos["ai_composite"]),
         "--set", f"provenance.trust_anchors={pki['ca']}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["state"] == "trusted"
    assert record["digital_source_types"] == ["compositeWithTrainedAlgorithmicMedia"]
    assert record["ingredient_count"] == 2


@pytest.mark.kafka
def test_credentials_and_labels_reach_the_verdict_through_kafka(kafka_config, videos, pki):
    """A trusted AI credential (once undeclared, once declared not synthetic), a store cut
    short, and no credentials on an upload its uploader declared synthetic: four verdicts of
    contract 1.2, each with its credentials and its label; the counters count each."""
    cfg = kafka_config.replace(provenance={"trust_anchors": str(pki["ca"])})
    pipeline = build_pipeline(cfg)
    uploads = {"signed": (videos["ai_generated"], None),
               "denied": (videos["ai_generated"], Declaration(False)),
               "cut": (videos["cut"], None),
               "plain": (sample_video("carphone_pristine.mp4"), Declaration(True, tool="FaceFusion 3"))}
    publish(cfg, [(name.encode(), upload_event(name, path.as_uri(), "tester", event_id=f"evt-{name}",
                                               declaration=declared))
                  for name, (path, declared) in uploads.items()])
    registry = CollectorRegistry()
    with running_worker(cfg, pipeline, registry=registry):
        outputs = read_outputs(cfg, expected=4)
    assert [topic for topic, _, _ in outputs] == [cfg.kafka.verdict_topic] * 4
    verdicts = {record["data"]["video_id"]: record for _, _, record in outputs}
    for record in verdicts.values():
        validator("verdict", "1.3").validate(record)
        assert record["dataschema"] == "https://schemas.deepfake-moderation.dev/v1.3/verdict.schema.json"
        assert record["data"]["frames_sampled"] == 32  # the video was judged whatever its credentials
        assert record["data"]["latency_seconds"]["credentials"] >= 0
        assert record["data"]["decision"] != "takedown"  # no model file here: no takedown at all
    signed = verdicts["signed"]["data"]["credentials"]
    assert (signed["state"], signed["digital_source_types"]) == ("trusted", ["trainedAlgorithmicMedia"])
    assert signed["signer"]["issuer"] == "Example Generator Ltd"
    cut = verdicts["cut"]["data"]["credentials"]
    assert (cut["state"], cut["reason"]) == ("unreadable", "manifest_malformed")
    assert verdicts["plain"]["data"]["credentials"]["state"] == "absent"
    labels = {name: record["data"]["label"] for name, record in verdicts.items()}
    assert labels == {
        "signed": {"status": "apply", "kind": "ai_generated", "basis": ["content_credentials"],
                   "rule": "credentials_say_synthetic"},
        "denied": {"status": "pending_review", "kind": "ai_generated", "basis": ["content_credentials"],
                   "rule": "declaration_contradicted_by_credentials"},
        "cut": {"status": "none", "kind": None, "basis": [], "rule": None},
        "plain": {"status": "apply", "kind": "ai_generated", "basis": ["uploader_declaration"],
                  "rule": "declared_synthetic"}}
    assert verdicts["denied"]["data"]["declaration"] == {"synthetic": False}
    assert verdicts["plain"]["data"]["declaration"] == {"synthetic": True, "tool": "FaceFusion 3"}
    assert "declaration" not in verdicts["signed"]["data"]
    assert verdicts["denied"]["data"]["decision"] == "review"
    assert "declaration_contradicted_by_credentials" in verdicts["denied"]["data"]["reasons"]
    for state, count in (("trusted", 2), ("unreadable", 1), ("absent", 1), ("valid", 0), ("invalid", 0)):
        assert registry.get_sample_value("moderation_credentials_total", {"state": state}) == count
    for (status, kind), count in ((("apply", "ai_generated"), 2), (("pending_review", "ai_generated"), 1),
                                  (("none", "none"), 1), (("apply", "ai_altered"), 0)):
        assert registry.get_sample_value("moderation_labels_total", {"status": status, "kind": kind}) == count
