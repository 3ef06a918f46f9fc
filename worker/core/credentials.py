"""What an upload's C2PA Content Credentials say, as a small, checked record.

``summarise`` turns what c2pa-python reports (its validation state, its validation results
and the active manifest) into a ``Credentials`` record; it is pure, so every rule is tested
on plain dicts. The record is what the worker keeps: the state, the failure codes, who
signed it with what tool, the IPTC digital source types of its creation and edit actions,
and how many ingredients it names. ``from_json`` reads it back from the reader's child
process and refuses anything it could not have sent.

States:

- ``absent``: no manifest store (or a container C2PA has no binding for);
- ``unreadable``: a store is there but could not be read (``reason`` says why: too large,
  cut short, a remote manifest the worker does not fetch, the reader crashed or ran out of
  time); nothing in it is believed;
- ``invalid``: read, and it fails validation (``validation_codes``); never taken as a
  declaration of anything;
- ``valid``: the signature and the hashes hold, but the signer does not chain to one of the
  operator's trust anchors (or none are configured);
- ``trusted``: valid, and signed by a certificate that chains to a trust anchor.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

ABSENT, UNREADABLE, INVALID, VALID, TRUSTED = "absent", "unreadable", "invalid", "valid", "trusted"
STATES = (ABSENT, UNREADABLE, INVALID, VALID, TRUSTED)

# Why a store is absent or unreadable.
UNSUPPORTED_CONTAINER = "unsupported_container"     # absent: C2PA has no binding for it here
MANIFEST_TOO_LARGE = "manifest_too_large"
MANIFEST_MALFORMED = "manifest_malformed"           # cut short, an absurd box size, bad JUMBF
REMOTE_MANIFEST_REFUSED = "remote_manifest_refused"
READER_TIMEOUT = "reader_timeout"
READER_OUT_OF_MEMORY = "reader_out_of_memory"
READER_CRASHED = "reader_crashed"
REASONS = (UNSUPPORTED_CONTAINER, MANIFEST_TOO_LARGE, MANIFEST_MALFORMED, REMOTE_MANIFEST_REFUSED,
           READER_TIMEOUT, READER_OUT_OF_MEMORY, READER_CRASHED)

# IPTC digital source types (https://cv.iptc.org/newscodes/digitalsourcetype/) that say the
# content is synthetic, and how: made by a model, or real content altered with one.
AI_GENERATED, AI_ALTERED = "ai_generated", "ai_altered"
SYNTHETIC_SOURCE_TYPES = {
    "trainedAlgorithmicMedia": AI_GENERATED,
    "algorithmicMedia": AI_GENERATED,
    "compositeWithTrainedAlgorithmicMedia": AI_ALTERED,
    "compositeSynthetic": AI_ALTERED,
}
_IPTC_PREFIXES = ("http://cv.iptc.org/newscodes/digitalsourcetype/",
                  "https://cv.iptc.org/newscodes/digitalsourcetype/")
_SOURCE_TYPE_ACTIONS = ("c2pa.created", "c2pa.edited")
_ACTIONS_LABELS = ("c2pa.actions", "c2pa.actions.v2")

# Bounds on what one record carries: a manifest is untrusted input.
_MAX_CODES = 32
_MAX_TEXT = 256
_MAX_SOURCE_TYPES = 16


@dataclass(frozen=True)
class Signer:
    issuer: str | None = None          # the signing certificate's organisation (c2pa's "issuer")
    common_name: str | None = None
    signing_time: str | None = None    # from a time-stamp authority's token; None without one


@dataclass(frozen=True)
class Credentials:
    state: str
    reason: str | None = None          # absent / unreadable: why (one of REASONS)
    message: str | None = None         # a human line for the reason, or the reader's error
    validation_codes: tuple[str, ...] = ()   # the active manifest's failure codes
    claim_generator: str | None = None
    signer: Signer | None = None
    digital_source_types: tuple[str, ...] = ()
    ingredient_count: int = 0
    remote_url: str | None = None      # a remote manifest's address (never fetched)
    manifest_bytes: int | None = None  # the embedded store's size

    def __post_init__(self):
        if self.state not in STATES:
            raise ValueError(f"unknown credentials state {self.state!r}")
        if self.reason is not None and self.reason not in REASONS:
            raise ValueError(f"unknown credentials reason {self.reason!r}")

    @property
    def believed(self) -> bool:
        """Whether the manifest may be taken as a statement about the content."""
        return self.state in (VALID, TRUSTED)

    @property
    def synthetic(self) -> str | None:
        """``ai_generated`` or ``ai_altered`` when believed credentials say so (generated
        wins over altered), else None."""
        if not self.believed:
            return None
        kinds = {SYNTHETIC_SOURCE_TYPES.get(t) for t in self.digital_source_types}
        for kind in (AI_GENERATED, AI_ALTERED):
            if kind in kinds:
                return kind
        return None

    def to_json(self) -> dict:
        document = asdict(self)
        document["validation_codes"] = list(self.validation_codes)
        document["digital_source_types"] = list(self.digital_source_types)
        return document

    @classmethod
    def from_json(cls, document) -> "Credentials":
        """The record back from its JSON form; ValueError for anything malformed."""
        if not isinstance(document, dict) or set(document) - _FIELDS:
            raise ValueError("credentials record is not an object of known fields")
        signer = document.get("signer")
        if signer is not None:
            if not isinstance(signer, dict) or set(signer) - _SIGNER_FIELDS:
                raise ValueError("credentials signer is not an object of known fields")
            signer = Signer(**{k: _text(signer.get(k)) for k in _SIGNER_FIELDS})
        count = document.get("ingredient_count", 0)
        size = document.get("manifest_bytes")
        if type(count) is not int or count < 0 or (size is not None and (type(size) is not int or size < 0)):
            raise ValueError("credentials counts are not non-negative integers")
        return cls(
            state=_required_text(document.get("state")),
            reason=_text(document.get("reason")),
            message=_text(document.get("message")),
            validation_codes=_texts(document.get("validation_codes", []), _MAX_CODES),
            claim_generator=_text(document.get("claim_generator")),
            signer=signer,
            digital_source_types=_texts(document.get("digital_source_types", []), _MAX_SOURCE_TYPES),
            ingredient_count=count,
            remote_url=_text(document.get("remote_url")),
            manifest_bytes=size,
        )


_FIELDS = {f for f in Credentials.__dataclass_fields__}
_SIGNER_FIELDS = {f for f in Signer.__dataclass_fields__}


def unreadable(reason: str, message: str, **facts) -> Credentials:
    return Credentials(UNREADABLE, reason=reason, message=_clip(message), **facts)


def summarise(validation_state, validation_results, manifest, *, trust_configured: bool,
              manifest_bytes: int | None = None) -> Credentials:
    """The record for what c2pa-python read: ``validation_state`` (``Invalid``, ``Valid`` or
    ``Trusted``), ``validation_results`` and the active ``manifest`` (both as its dicts).
    ``Trusted`` is believed only when the operator configured trust anchors."""
    codes = _failure_codes(validation_results)
    state = {"Invalid": INVALID, "Valid": VALID, "Trusted": TRUSTED}.get(validation_state)
    if state is None:
        return unreadable(MANIFEST_MALFORMED, f"the reader gave no validation state ({str(validation_state)[:40]!r})",
                          manifest_bytes=manifest_bytes)
    if state == TRUSTED and not trust_configured:
        state = VALID
    if not isinstance(manifest, dict):
        if state != INVALID:
            return unreadable(MANIFEST_MALFORMED, "the store has no active manifest", manifest_bytes=manifest_bytes)
        manifest = {}
    return Credentials(
        state=state,
        validation_codes=codes,
        claim_generator=_claim_generator(manifest),
        signer=_signer(manifest.get("signature_info")),
        digital_source_types=_source_types(manifest.get("assertions")),
        ingredient_count=len(manifest["ingredients"]) if isinstance(manifest.get("ingredients"), list) else 0,
        manifest_bytes=manifest_bytes,
    )


def _failure_codes(results) -> tuple[str, ...]:
    active = results.get("activeManifest") if isinstance(results, dict) else None
    failures = active.get("failure") if isinstance(active, dict) else None
    if not isinstance(failures, list):
        return ()
    codes = [item.get("code") for item in failures if isinstance(item, dict)]
    return tuple(dict.fromkeys(_clip(c) for c in codes if isinstance(c, str)))[:_MAX_CODES]


def _claim_generator(manifest: dict) -> str | None:
    info = manifest.get("claim_generator_info")
    if isinstance(info, list) and info and isinstance(info[0], dict):
        name, version = info[0].get("name"), info[0].get("version")
        if isinstance(name, str):
            return _clip(f"{name} {version}" if isinstance(version, str) else name)
    generator = manifest.get("claim_generator")  # claims of version 1
    return _clip(generator) if isinstance(generator, str) else None


def _signer(info) -> Signer | None:
    if not isinstance(info, dict):
        return None
    return Signer(issuer=_loose_text(info.get("issuer")), common_name=_loose_text(info.get("common_name")),
                  signing_time=_loose_text(info.get("time")))


def _source_types(assertions) -> tuple[str, ...]:
    found: list[str] = []
    for assertion in assertions if isinstance(assertions, list) else ():
        if not isinstance(assertion, dict) or assertion.get("label") not in _ACTIONS_LABELS:
            continue
        data = assertion.get("data")
        actions = data.get("actions") if isinstance(data, dict) else None
        for action in actions if isinstance(actions, list) else ():
            if not isinstance(action, dict) or action.get("action") not in _SOURCE_TYPE_ACTIONS:
                continue
            source = action.get("digitalSourceType")
            if isinstance(source, str) and source:
                for prefix in _IPTC_PREFIXES:
                    if source.startswith(prefix):
                        source = source[len(prefix):]
                found.append(_clip(source))
    return tuple(dict.fromkeys(found))[:_MAX_SOURCE_TYPES]


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT - 1] + "…"


def _loose_text(value) -> str | None:
    """A manifest's text field; anything else in its place is taken as missing."""
    return _clip(value) if isinstance(value, str) else None


def _text(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("credentials text field is not a string")
    return _clip(value)


def _required_text(value) -> str:
    if not isinstance(value, str):
        raise ValueError("credentials state is not a string")
    return value


def _texts(values, limit: int) -> tuple[str, ...]:
    if not isinstance(values, list) or len(values) > limit:
        raise ValueError("credentials list is not a short list")
    return tuple(_clip(_required_text(v)) for v in values)
