"""The labelling rules: one table, total, that never takes content down, and the one the docs print."""
from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from worker.core.credentials import Credentials
from worker.core.policy import (ALLOW, APPLY, NONE, PENDING_REVIEW, REVIEW, RULES, TAKEDOWN, Decision,
                                Declaration, Label, label, matching_rule)

ROOT = Path(__file__).resolve().parents[2]

AI = Credentials("trusted", digital_source_types=("trainedAlgorithmicMedia",))
AI_COMPOSITE = Credentials("valid", digital_source_types=("compositeWithTrainedAlgorithmicMedia",))
CAMERA = Credentials("trusted", digital_source_types=("digitalCapture",))
TAMPERED_AI = Credentials("invalid", validation_codes=("assertion.dataHash.mismatch",),
                          digital_source_types=("trainedAlgorithmicMedia",))

LOW = Decision(ALLOW, ("score_below_review_threshold",), 0.1)
NO_FACES = Decision(ALLOW, ("no_faces_detected",), None)
HIGH = Decision(REVIEW, ("score_at_or_above_review_threshold",), 0.7)
UNCALIBRATED = Decision(REVIEW, ("model_uncalibrated",), 0.97)
TAKEN_DOWN = Decision(TAKEDOWN, ("score_at_or_above_takedown_threshold",), 0.99)
KNOWN = Decision(TAKEDOWN, ("known_content_match",), None)
NO_MODEL = Decision(REVIEW, ("no_model_checkpoint",), None)


@pytest.mark.parametrize("declaration, credentials, decision, status, kind, basis, rule, outcome", [
    # declared synthetic: labelled, no takedown for that reason alone
    (Declaration(True), None, LOW, APPLY, "ai_generated", ("uploader_declaration",), "declared_synthetic", ALLOW),
    (Declaration(True, "ai_altered", "FaceFusion"), None, NO_FACES, APPLY, "ai_altered",
     ("uploader_declaration",), "declared_synthetic", ALLOW),
    (Declaration(True), AI_COMPOSITE, HIGH, APPLY, "ai_altered",
     ("uploader_declaration", "content_credentials", "detectors"), "declared_synthetic", REVIEW),
    # undeclared, believed credentials with an AI source type: labelled on their word
    (None, AI, NO_FACES, APPLY, "ai_generated", ("content_credentials",), "credentials_say_synthetic", ALLOW),
    (None, AI_COMPOSITE, LOW, APPLY, "ai_altered", ("content_credentials",), "credentials_say_synthetic", ALLOW),
    # declared not synthetic, contradicted: pending review, at least review
    (Declaration(False), AI, LOW, PENDING_REVIEW, "ai_generated", ("content_credentials",),
     "declaration_contradicted_by_credentials", REVIEW),
    (Declaration(False), None, HIGH, PENDING_REVIEW, "ai_altered", ("detectors",),
     "declaration_contradicted_by_detectors", REVIEW),
    (Declaration(False), CAMERA, UNCALIBRATED, PENDING_REVIEW, "ai_altered", ("detectors",),
     "declaration_contradicted_by_detectors", REVIEW),
    # undeclared, the detectors at or above review: a label may be owed
    (None, None, HIGH, PENDING_REVIEW, "ai_altered", ("detectors",), "label_may_be_owed", REVIEW),
    # nobody says synthetic
    (None, None, LOW, NONE, None, (), None, ALLOW),
    (Declaration(False), CAMERA, LOW, NONE, None, (), None, ALLOW),
    (None, None, NO_MODEL, NONE, None, (), None, REVIEW),  # faces nobody scored are not evidence
    # tampered credentials say nothing, whatever source type they claim
    (None, TAMPERED_AI, LOW, NONE, None, (), None, ALLOW),
    (Declaration(False), TAMPERED_AI, NO_FACES, NONE, None, (), None, ALLOW),
    (None, Credentials("unreadable", reason="remote_manifest_refused"), LOW, NONE, None, (), None, ALLOW),
])
def test_the_rules(declaration, credentials, decision, status, kind, basis, rule, outcome):
    needed, decided = label(declaration, credentials, decision)
    assert needed == Label(status, kind, basis, rule)
    assert decided.decision == outcome
    assert decided.reasons == decision.reasons + ((rule,) if rule else ())
    assert (decided.video_score, decided.raw_video_score, decided.track_id) == (
        decision.video_score, decision.raw_video_score, decision.track_id)


@pytest.mark.parametrize("decision", [TAKEN_DOWN, KNOWN])
def test_a_takedown_keeps_its_reasons_and_the_label_says_what_it_would_need(decision):
    needed, decided = label(Declaration(False), AI, decision)
    assert decided == decision
    assert (needed.status, needed.rule) == (PENDING_REVIEW, "declaration_contradicted_by_credentials")
    needed, decided = label(Declaration(True), None, decision)
    assert decided == decision and needed.status == APPLY


def test_the_table_is_total_and_never_takes_content_down():
    declarations = [None, Declaration(True), Declaration(True, "ai_altered"), Declaration(False)]
    credentials = [None, AI, AI_COMPOSITE, CAMERA, TAMPERED_AI, Credentials("absent")]
    decisions = [LOW, NO_FACES, HIGH, UNCALIBRATED, TAKEN_DOWN, KNOWN, NO_MODEL]
    for declared, creds, decision in itertools.product(declarations, credentials, decisions):
        needed, decided = label(declared, creds, decision)
        if decision.decision != TAKEDOWN:
            assert decided.decision != TAKEDOWN
            assert decided.decision == decision.decision or (decision.decision, decided.decision) == (ALLOW, REVIEW)
        if needed.status == NONE:
            assert decided == decision and needed.basis == ()
        else:
            assert needed.basis and needed.rule is not None
    for cells in itertools.product(("synthetic", "not_synthetic", "undeclared"), ("synthetic", "other"),
                                   ("synthetic", "other")):
        assert matching_rule(*cells) in RULES


def test_a_declaration_names_a_kind_only_when_synthetic():
    with pytest.raises(ValueError):
        Declaration(False, "ai_generated")
    with pytest.raises(ValueError):
        Declaration(True, "deepfake")


def test_the_docs_print_the_same_table():
    text = (ROOT / "docs" / "labels.md").read_text()
    table = text[text.index("| declared | credentials |"):].split("\n\n")[0].splitlines()[2:]
    words = {"synthetic": "synthetic", "not synthetic": "not_synthetic", "undeclared": "undeclared",
             "other": "other", "*": "*"}
    rows = []
    for line in table:
        declared, creds, detectors, status, rule, outcome = [c.strip() for c in line.strip("|").split("|")]
        rows.append((words[declared], words[creds], words[detectors], status,
                     re.sub(r"`", "", rule) or None, outcome == "at least review"))
    assert rows == [tuple(r) for r in RULES]
