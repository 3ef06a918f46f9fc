"""Content credentials: the rules that turn c2pa-python's report into a record, the strict
reading of the record the reader's child sends, and the child's failures (scripted children
stand in for c2pa; tests/integration/test_credentials.py reads real signed files)."""
from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import pytest

from worker.core import credentials as cr
from worker.core.credentials import Credentials, Signer, summarise
from worker.provenance.sandbox import CredentialReader, ReaderSettings, TrustAnchorsError, check_trust_anchors
from worker.provenance.store import C2PA_UUID, XMP_UUID, locate

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"


def manifest(*actions, ingredients=0, generator=("gen", "2.1"), signature=None):
    return {
        "claim_generator_info": [{"name": generator[0], "version": generator[1]}],
        "assertions": [
            {"label": "c2pa.hash.bmff.v3", "data": {}},
            {"label": "c2pa.actions.v2", "data": {"actions": [
                {"action": a, "digitalSourceType": IPTC + t} if t else {"action": a} for a, t in actions]}},
        ],
        "ingredients": [{"title": f"i{i}"} for i in range(ingredients)],
        "signature_info": signature or {"alg": "Es256", "issuer": "Org", "common_name": "Signer",
                                        "time": "2026-11-30T10:00:00+00:00"},
    }


def results(*failures):
    return {"activeManifest": {"success": [{"code": "claimSignature.validated"}],
                               "failure": [{"code": c, "explanation": "x"} for c in failures]}}


def test_valid_ai_generated_manifest_is_summarised_field_by_field():
    got = summarise("Valid", results(), manifest(("c2pa.created", "trainedAlgorithmicMedia"), ingredients=2),
                    trust_configured=False, manifest_bytes=4000)
    assert got == Credentials(
        state="valid", claim_generator="gen 2.1",
        signer=Signer(issuer="Org", common_name="Signer", signing_time="2026-11-30T10:00:00+00:00"),
        digital_source_types=("trainedAlgorithmicMedia",), ingredient_count=2, manifest_bytes=4000)
    assert got.synthetic == cr.AI_GENERATED and got.believed


@pytest.mark.parametrize("source, synthetic", [
    ("trainedAlgorithmicMedia", cr.AI_GENERATED),
    ("algorithmicMedia", cr.AI_GENERATED),
    ("compositeWithTrainedAlgorithmicMedia", cr.AI_ALTERED),
    ("compositeSynthetic", cr.AI_ALTERED),
    ("digitalCapture", None),
    ("algorithmicallyEnhanced", None),
])
def test_source_types_say_whether_content_is_synthetic(source, synthetic):
    got = summarise("Valid", results(), manifest(("c2pa.edited", source)), trust_configured=False)
    assert got.digital_source_types == (source,)
    assert got.synthetic == synthetic


def test_generated_wins_over_altered_and_only_created_and_edited_count():
    got = summarise("Valid", results(), manifest(
        ("c2pa.opened", "digitalCapture"), ("c2pa.edited", "compositeWithTrainedAlgorithmicMedia"),
        ("c2pa.created", "trainedAlgorithmicMedia"), ("c2pa.edited", "trainedAlgorithmicMedia"),
        ("c2pa.created", None)), trust_configured=False)
    assert got.digital_source_types == ("compositeWithTrainedAlgorithmicMedia", "trainedAlgorithmicMedia")
    assert got.synthetic == cr.AI_GENERATED


def test_trusted_needs_configured_anchors():
    m = manifest(("c2pa.created", "digitalCapture"))
    assert summarise("Trusted", results(), m, trust_configured=True).state == cr.TRUSTED
    assert summarise("Trusted", results(), m, trust_configured=False).state == cr.VALID


def test_invalid_manifest_keeps_its_codes_and_declares_nothing():
    got = summarise("Invalid", results("assertion.bmffHash.mismatch", "assertion.bmffHash.mismatch",
                                       "signingCredential.untrusted"),
                    manifest(("c2pa.created", "trainedAlgorithmicMedia")), trust_configured=True)
    assert got.state == cr.INVALID
    assert got.validation_codes == ("assertion.bmffHash.mismatch", "signingCredential.untrusted")
    assert got.digital_source_types == ("trainedAlgorithmicMedia",)
    assert got.synthetic is None and not got.believed


def test_a_report_without_state_or_manifest_is_unreadable():
    assert summarise(None, {}, manifest(), trust_configured=False).reason == cr.MANIFEST_MALFORMED
    got = summarise("Valid", {}, None, trust_configured=False)
    assert (got.state, got.reason) == (cr.UNREADABLE, cr.MANIFEST_MALFORMED)


def test_hostile_manifest_contents_are_bounded_and_typed():
    huge = "x" * 10_000
    m = manifest(*[("c2pa.created", f"t{i}") for i in range(100)], generator=(huge, 7))
    m["signature_info"] = {"issuer": 5, "common_name": huge}
    m["ingredients"] = "not a list"
    m["assertions"].append({"label": "c2pa.actions", "data": {"actions": "nope"}})
    got = summarise("Invalid", results(*[f"code{i}" for i in range(100)]), m, trust_configured=False)
    assert len(got.claim_generator) == 256 and len(got.signer.common_name) == 256
    assert got.signer.issuer is None
    assert len(got.validation_codes) == 32 and len(got.digital_source_types) == 16
    assert got.ingredient_count == 0
    with pytest.raises(ValueError):  # the issuer was a number
        Credentials.from_json(got.to_json() | {"signer": {"issuer": 5}})


def test_claim_v1_generator_string_is_read():
    m = manifest()
    del m["claim_generator_info"]
    m["claim_generator"] = "OldTool/1.0 c2pa-rs/0.30"
    assert summarise("Valid", results(), m, trust_configured=False).claim_generator == "OldTool/1.0 c2pa-rs/0.30"


def test_record_round_trips_and_unknown_values_are_refused():
    record = summarise("Valid", results(), manifest(("c2pa.created", "digitalCapture"), ingredients=1),
                       trust_configured=False, manifest_bytes=10)
    assert Credentials.from_json(json.loads(json.dumps(record.to_json()))) == record
    good = record.to_json()
    for bad in ({"state": "certain"}, {"reason": "because"}, {"extra": 1}, {"ingredient_count": -1},
                {"ingredient_count": True}, {"validation_codes": "a"}, {"validation_codes": [1]},
                {"digital_source_types": ["x"] * 17}, {"signer": {"who": "me"}}, {"manifest_bytes": "9"}):
        with pytest.raises(ValueError):
            Credentials.from_json(good | bad)
    with pytest.raises(ValueError):
        Credentials.from_json(["not", "a", "record"])


# Where the store is.

def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def mp4(*boxes: bytes) -> bytes:
    return box(b"ftyp", b"isom\x00\x00\x02\x00isommp41") + b"".join(boxes)


def test_locate_finds_the_store_and_its_size(tmp_path):
    path = tmp_path / "a.mp4"
    store = box(b"uuid", C2PA_UUID + b"\x00" * 100)
    path.write_bytes(mp4(store, box(b"mdat", b"\x00" * 50)))
    where = locate(path)
    assert (where.reader_format, where.manifest_bytes, where.maybe_store, where.malformed) == (
        "video/mp4", len(store), True, None)


def test_locate_proves_absence_or_sees_xmp(tmp_path):
    plain, xmp = tmp_path / "plain.mp4", tmp_path / "xmp.mp4"
    plain.write_bytes(mp4(box(b"mdat", b"\x00" * 50)))
    xmp.write_bytes(mp4(box(b"uuid", XMP_UUID + b"<x/>"), box(b"mdat", b"")))
    assert not locate(plain).maybe_store
    assert locate(xmp).maybe_store and locate(xmp).manifest_bytes is None


def test_locate_flags_a_store_past_the_end_and_two_stores(tmp_path):
    past, two = tmp_path / "past.mp4", tmp_path / "two.mp4"
    past.write_bytes(mp4(struct.pack(">I4s", 1 << 30, b"uuid") + C2PA_UUID + b"\x00" * 10))
    store = box(b"uuid", C2PA_UUID + b"\x00")
    two.write_bytes(mp4(store, store))
    assert "past the end" in locate(past).malformed
    assert "2 C2PA boxes" in locate(two).malformed


def test_locate_names_containers_c2pa_cannot_read(tmp_path):
    webm, avi = tmp_path / "a.webm", tmp_path / "a.avi"
    webm.write_bytes(b"\x1a\x45\xdf\xa3" + b"\x00" * 40)
    avi.write_bytes(b"RIFF\x00\x00\x00\x00AVI " + b"\x00" * 40)
    assert locate(webm).reader_format is None
    assert locate(avi).reader_format == "video/avi" and locate(avi).maybe_store


# The reader's child, scripted.

def signed_looking(tmp_path: Path, store_bytes: int = 100) -> Path:
    path = tmp_path / "signed.mp4"
    path.write_bytes(mp4(box(b"uuid", C2PA_UUID + b"\x00" * store_bytes), box(b"mdat", b"")))
    return path


def scripted(script: str) -> list[str]:
    return [sys.executable, "-c", "import sys\n" + script]


def read_with(tmp_path, script: str, **settings) -> Credentials:
    reader = CredentialReader(ReaderSettings(**settings), command=scripted(script))
    try:
        return reader.read(signed_looking(tmp_path))
    finally:
        reader.close()


ANSWER = json.dumps(Credentials("valid", digital_source_types=("digitalCapture",)).to_json())


def test_a_well_behaved_child_is_believed_and_kept(tmp_path):
    script = f"for line in sys.stdin:\n    print({ANSWER!r}, flush=True)\n"
    reader = CredentialReader(ReaderSettings(), command=scripted(script))
    try:
        first = reader.read(signed_looking(tmp_path))
        child = reader._idle.get_nowait()
        reader._idle.put(child)
        second = reader.read(signed_looking(tmp_path))
        assert reader._idle.get_nowait() is child  # one child served both
        child.kill()
    finally:
        reader.close()
    assert first == second == Credentials("valid", digital_source_types=("digitalCapture",))


@pytest.mark.parametrize("script, reason, words", [
    ("import time\ntime.sleep(60)", cr.READER_TIMEOUT, "provenance.timeout_s"),
    ("sys.exit(3)", cr.READER_CRASHED, "exit code 3"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", cr.READER_CRASHED, "signal 11"),
    ("print('not json', flush=True)", cr.READER_CRASHED, "malformed answer"),
    ("print('{\"state\": \"certain\"}', flush=True)", cr.READER_CRASHED, "malformed answer"),
    ("sys.stdout.write('x' * (2 << 20)); sys.stdout.flush()\nimport time; time.sleep(5)", cr.READER_CRASHED,
     "oversized"),
])
def test_a_failing_child_costs_only_the_credentials(tmp_path, script, reason, words):
    got = read_with(tmp_path, "sys.stdin.readline()\n" + script, timeout_s=1.0)
    assert (got.state, got.reason) == (cr.UNREADABLE, reason)
    assert words in got.message
    assert got.manifest_bytes == 124


def test_a_child_that_says_more_than_it_was_asked_is_not_reused(tmp_path):
    """Two answers to one request: both in one read is the reader crashing; the second
    arriving later must never be taken as the next upload's answer."""
    script = (f"import time\nfor line in sys.stdin:\n    print({ANSWER!r}, flush=True)\n"
              f"    time.sleep(0.05)\n    print({ANSWER!r}, flush=True)\n")
    reader = CredentialReader(ReaderSettings(), command=scripted(script))

    def idle_pids():
        children = []
        while not reader._idle.empty():
            children.append(reader._idle.get_nowait())
        for child in children:
            reader._idle.put(child)
        return {c.proc.pid for c in children}

    try:
        for _ in range(3):
            before = idle_pids()
            time.sleep(0.3)  # the stray second answer is in the pipe by now
            got = reader.read(signed_looking(tmp_path))
            assert got.state == cr.VALID or got.reason == cr.READER_CRASHED
            assert not before & idle_pids()  # never the child that said too much
    finally:
        reader.close()


def test_size_cap_and_absence_need_no_child(tmp_path):
    never = "raise SystemExit('must not run')"
    reader = CredentialReader(ReaderSettings(max_manifest_bytes=50), command=scripted(never))
    big = reader.read(signed_looking(tmp_path))
    plain = tmp_path / "plain.mp4"
    plain.write_bytes(mp4(box(b"mdat", b"")))
    assert (big.state, big.reason, big.manifest_bytes) == (cr.UNREADABLE, cr.MANIFEST_TOO_LARGE, 124)
    assert reader.read(plain) == Credentials(cr.ABSENT)
    assert reader._idle.empty()


def test_trust_anchor_bundle_is_checked(tmp_path):
    check_trust_anchors("")
    with pytest.raises(TrustAnchorsError, match="cannot read"):
        check_trust_anchors(str(tmp_path / "missing.pem"))
    (tmp_path / "empty.pem").write_text("nothing here")
    with pytest.raises(TrustAnchorsError, match="no PEM certificate"):
        check_trust_anchors(str(tmp_path / "empty.pem"))
