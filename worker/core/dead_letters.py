"""Dead-letter reasons.

Every consumed event ends as exactly one verdict or exactly one dead-letter record. Any
stage that cannot go on raises :class:`DeadLetter` with one of the reason codes below; the
runner turns it into a dead-letter record and moves on to the next event.
"""
from __future__ import annotations

# The event itself
EVENT_TOO_LARGE = "event_too_large"
INVALID_JSON = "invalid_json"
SCHEMA_VIOLATION = "schema_violation"
UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
# Fetching the video
UNSUPPORTED_URI_SCHEME = "unsupported_uri_scheme"
URI_NOT_ALLOWED = "uri_not_allowed"
VIDEO_NOT_FOUND = "video_not_found"
VIDEO_UNREADABLE = "video_unreadable"
VIDEO_TOO_LARGE = "video_too_large"
FETCH_FAILED = "fetch_failed"
FETCH_TIMEOUT = "fetch_timeout"
TOO_MANY_REDIRECTS = "too_many_redirects"
# Decoding it
EMPTY_FILE = "empty_file"
NOT_A_VIDEO = "not_a_video"
VIDEO_TRUNCATED = "video_truncated"
CORRUPT_VIDEO = "corrupt_video"
NO_FRAMES = "no_frames"
VIDEO_TOO_LONG = "video_too_long"
VIDEO_DIMENSIONS_TOO_LARGE = "video_dimensions_too_large"
DECODER_CRASHED = "decoder_crashed"
# The event was already processed, or took too long
DUPLICATE_EVENT = "duplicate_event"
TIMEOUT = "timeout"
# A takedown's bank entry was removed before its dense fingerprint was ready
BANK_ENTRY_GONE = "bank_entry_gone"
# Anything the worker did not foresee; the event is kept for replay
INTERNAL_ERROR = "internal_error"

REASONS = frozenset({
    EVENT_TOO_LARGE, INVALID_JSON, SCHEMA_VIOLATION, UNSUPPORTED_SCHEMA_VERSION,
    UNSUPPORTED_URI_SCHEME, URI_NOT_ALLOWED, VIDEO_NOT_FOUND, VIDEO_UNREADABLE,
    VIDEO_TOO_LARGE, FETCH_FAILED, FETCH_TIMEOUT, TOO_MANY_REDIRECTS, EMPTY_FILE, NOT_A_VIDEO,
    VIDEO_TRUNCATED, CORRUPT_VIDEO, NO_FRAMES, VIDEO_TOO_LONG, VIDEO_DIMENSIONS_TOO_LARGE,
    DECODER_CRASHED, DUPLICATE_EVENT, TIMEOUT, BANK_ENTRY_GONE, INTERNAL_ERROR,
})


class DeadLetter(Exception):
    """An event that cannot become a verdict, with a reason code from this module."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown dead-letter reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def internal_error(exc: BaseException) -> DeadLetter:
    """A bug or an unforeseen input: the event is kept for replay and the worker goes on."""
    return DeadLetter(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
