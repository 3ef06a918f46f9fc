"""Takedown policy: face-track scores and thresholds in, a decision and reason codes out.

Pure and deterministic, so that a verdict can be re-derived from its evidence during an
audit. The policy version names the thresholds, and every verdict carries it.

A model acts on its own (``takedown``) only when its model file carries a calibration
fitted on the platform's labelled data: its thresholds then apply to the calibrated score,
and the policy version names the calibration. An uncalibrated model's raw score is not a
probability anyone can defend, so its highest outcome is ``review`` (``model_uncalibrated``);
the ``[policy]`` thresholds still sort its scores into review and allow.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple, Sequence

from worker.core.calibration import Calibration
from worker.core.credentials import AI_ALTERED, AI_GENERATED, Credentials
from worker.core.tracks import FaceTrack

TAKEDOWN = "takedown"
REVIEW = "review"
ALLOW = "allow"

KNOWN_CONTENT_MATCH = "known_content_match"
NO_FACES_DETECTED = "no_faces_detected"
NO_MODEL_CHECKPOINT = "no_model_checkpoint"
MODEL_UNCALIBRATED = "model_uncalibrated"
SCORE_AT_OR_ABOVE_TAKEDOWN_THRESHOLD = "score_at_or_above_takedown_threshold"
SCORE_AT_OR_ABOVE_REVIEW_THRESHOLD = "score_at_or_above_review_threshold"
SCORE_BELOW_REVIEW_THRESHOLD = "score_below_review_threshold"


@dataclass(frozen=True)
class Policy:
    takedown_threshold: float = 0.9
    review_threshold: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.review_threshold <= self.takedown_threshold <= 1.0:
            raise ValueError("thresholds must satisfy 0 <= review <= takedown <= 1")

    @property
    def version(self) -> str:
        # repr is the shortest exact form: two different thresholds never share a version.
        return f"thresholds-v1:takedown={self.takedown_threshold!r},review={self.review_threshold!r}"


@dataclass(frozen=True)
class KnownContentMatch:
    """The upload matched an entry of the known-content (positive) hash bank."""

    entry_id: str
    source_video_id: str | None
    query_match_percent: float   # share of the upload's frames that matched the entry
    entry_match_percent: float   # share of the entry's frames that the upload matched
    median_distance: float       # median PDQ Hamming distance of the matched frame pairs


@dataclass(frozen=True)
class Decision:
    decision: str
    reasons: tuple[str, ...]
    video_score: float | None           # calibrated when the model has a calibration, else raw
    raw_video_score: float | None = None
    track_id: int | None = None         # the track whose score is the video score


def policy_version(policy: Policy, calibration: Calibration | None) -> str:
    """What the verdict's thresholds were: the calibration's when the model has one."""
    return f"calibrated-v1:{calibration.version}" if calibration is not None else policy.version


def decisive_track(tracks: Sequence[FaceTrack]) -> FaceTrack | None:
    """The most suspicious track: one faked face among real ones must not be diluted."""
    scored = [t for t in tracks if t.score is not None]
    return max(scored, key=lambda t: t.score) if scored else None


def video_score(tracks: Sequence[FaceTrack]) -> float | None:
    """The raw video score: the most suspicious track's."""
    track = decisive_track(tracks)
    return None if track is None else track.score


def decide(policy: Policy, tracks: Sequence[FaceTrack], model_loaded: bool,
           known: KnownContentMatch | None = None,
           calibration: Calibration | None = None) -> Decision:
    """``calibration`` is the loaded model's (None: the model is uncalibrated)."""
    track = decisive_track(tracks) if model_loaded else None
    raw = None if track is None else track.score
    score = raw if raw is None or calibration is None else calibration.apply(raw)
    track_id = None if track is None else track.track_id
    if known is not None:
        # Content already taken down: no model uncertainty. A score, if one was computed,
        # is evidence only.
        return Decision(TAKEDOWN, (KNOWN_CONTENT_MATCH,), score, raw, track_id)
    if not tracks:
        return Decision(ALLOW, (NO_FACES_DETECTED,), None)
    if not model_loaded:
        # Faces were found but nothing trustworthy scored them: a person decides.
        return Decision(REVIEW, (NO_MODEL_CHECKPOINT,), None)
    if score is None:
        raise ValueError("a model is loaded but no track has a score")
    if calibration is not None:
        takedown, review = calibration.takedown_threshold, calibration.review_threshold
    else:
        takedown, review = policy.takedown_threshold, policy.review_threshold
    if score >= takedown:
        if calibration is None:
            return Decision(REVIEW, (MODEL_UNCALIBRATED,), score, raw, track_id)
        return Decision(TAKEDOWN, (SCORE_AT_OR_ABOVE_TAKEDOWN_THRESHOLD,), score, raw, track_id)
    if score >= review:
        return Decision(REVIEW, (SCORE_AT_OR_ABOVE_REVIEW_THRESHOLD,), score, raw, track_id)
    return Decision(ALLOW, (SCORE_BELOW_REVIEW_THRESHOLD,), score, raw, track_id)


# --- Synthetic-content labels ----------------------------------------------------------------
#
# India's IT Rules (as amended in 2026) ask a platform to label synthetically generated
# content, to take the uploader's declaration and to verify it by technical means; the EU AI
# Act's Article 50 asks for machine-readable marking. Three sources speak to it:
#
# - the uploader's declaration in the upload event (synthetic or not; optional);
# - the upload's content credentials, when valid or trusted and naming an AI digital source
#   type (invalid, unreadable or absent credentials say nothing: "as if there were none");
# - the detectors: a face score at or above the review threshold.
#
# RULES is the whole decision as one table, read top to bottom, first match wins; docs/labels.md
# prints the same table and a test holds the two together. A label never takes content down
# by itself: a rule may raise allow to review (a person decides), never to takedown; the faces
# and the hash bank decide takedowns as before.

KINDS = (AI_GENERATED, AI_ALTERED)

# What the verdict says about the label.
NONE, APPLY, PENDING_REVIEW = "none", "apply", "pending_review"
STATUSES = (NONE, APPLY, PENDING_REVIEW)

# What says so (the label's basis).
UPLOADER_DECLARATION = "uploader_declaration"
CONTENT_CREDENTIALS = "content_credentials"
DETECTORS = "detectors"

# Reason codes the rules add to the verdict's reasons.
DECLARED_SYNTHETIC = "declared_synthetic"
CREDENTIALS_SAY_SYNTHETIC = "credentials_say_synthetic"
DECLARATION_CONTRADICTED_BY_CREDENTIALS = "declaration_contradicted_by_credentials"
DECLARATION_CONTRADICTED_BY_DETECTORS = "declaration_contradicted_by_detectors"
LABEL_MAY_BE_OWED = "label_may_be_owed"

# The detectors "say synthetic" when the face score reached the review threshold.
_SCORE_REASONS = {SCORE_AT_OR_ABOVE_TAKEDOWN_THRESHOLD, SCORE_AT_OR_ABOVE_REVIEW_THRESHOLD, MODEL_UNCALIBRATED}


@dataclass(frozen=True)
class Declaration:
    """What the uploader said: synthetic or not, how (``kind``), and with what tool."""

    synthetic: bool
    kind: str | None = None   # ai_generated or ai_altered, only when synthetic
    tool: str | None = None   # the tool the uploader names, as they wrote it

    def __post_init__(self):
        if self.kind is not None and (not self.synthetic or self.kind not in KINDS):
            raise ValueError(f"a declaration's kind is one of {KINDS}, and only when synthetic")


@dataclass(frozen=True)
class Label:
    status: str                 # none, apply, pending_review
    kind: str | None            # ai_generated or ai_altered; None when status is none
    basis: tuple[str, ...]      # which sources say the content is synthetic
    rule: str | None            # the rule's reason code, also among the verdict's reasons

    def __post_init__(self):
        if self.status not in STATUSES or (self.kind is None) != (self.status == NONE):
            raise ValueError(f"bad label {self.status!r} / {self.kind!r}")


class Rule(NamedTuple):
    declared: str       # "synthetic", "not_synthetic", "undeclared" or "*"
    credentials: str    # "synthetic" (believed, AI source type), "other" or "*"
    detectors: str      # "synthetic" (score at or above review), "other" or "*"
    status: str
    reason: str | None     # the reason code it adds to the verdict
    at_least_review: bool  # the rule raises an allow to review


ANY = "*"
RULES: tuple[Rule, ...] = (
    Rule("synthetic", ANY, ANY, APPLY, DECLARED_SYNTHETIC, False),
    Rule("not_synthetic", "synthetic", ANY, PENDING_REVIEW, DECLARATION_CONTRADICTED_BY_CREDENTIALS, True),
    Rule("not_synthetic", "other", "synthetic", PENDING_REVIEW, DECLARATION_CONTRADICTED_BY_DETECTORS, True),
    Rule("undeclared", "synthetic", ANY, APPLY, CREDENTIALS_SAY_SYNTHETIC, False),
    Rule("undeclared", "other", "synthetic", PENDING_REVIEW, LABEL_MAY_BE_OWED, True),
    Rule(ANY, "other", "other", NONE, None, False),
)


def _declared(declaration: Declaration | None) -> str:
    if declaration is None:
        return "undeclared"
    return "synthetic" if declaration.synthetic else "not_synthetic"


def detectors_say_synthetic(decision: Decision) -> bool:
    return bool(_SCORE_REASONS.intersection(decision.reasons))


def matching_rule(declared: str, credentials: str, detectors: str) -> Rule:
    for rule in RULES:
        if all(want in (ANY, got) for want, got in zip(rule[:3], (declared, credentials, detectors))):
            return rule
    raise AssertionError(f"no rule for {declared}/{credentials}/{detectors}")  # the table is total


def label(declaration: Declaration | None, credentials: Credentials | None,
          decision: Decision) -> tuple[Label, Decision]:
    """The label the upload needs, and the decision with the rule's reason added (and, where
    the rule says so, an allow raised to review); a takedown is left as it is."""
    from_credentials = credentials.synthetic if credentials is not None else None
    by_detectors = detectors_say_synthetic(decision)
    rule = matching_rule(_declared(declaration), "synthetic" if from_credentials else "other",
                         "synthetic" if by_detectors else "other")
    if rule.status == NONE:
        return Label(NONE, None, (), None), decision
    declared_synthetic = declaration is not None and declaration.synthetic
    basis = tuple(source for source, says in ((UPLOADER_DECLARATION, declared_synthetic),
                                              (CONTENT_CREDENTIALS, bool(from_credentials)),
                                              (DETECTORS, by_detectors)) if says)
    # Signed credentials name the kind best, then the uploader (AI-generated unless they say
    # altered); the face detectors find faces swapped or re-animated in real footage: altered.
    if from_credentials:
        kind = from_credentials
    elif declared_synthetic:
        kind = declaration.kind or AI_GENERATED
    else:
        kind = AI_ALTERED
    needed = Label(rule.status, kind, basis, rule.reason)
    if decision.decision == TAKEDOWN:
        # The content comes down for its own reasons; the label says what it would need,
        # should a reviewer restore it.
        return needed, decision
    outcome = REVIEW if rule.at_least_review else decision.decision
    return needed, replace(decision, decision=outcome, reasons=decision.reasons + (rule.reason,))
