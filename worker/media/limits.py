"""What one decode may cost and what it returns: the decoder's settings, in one frozen object.

The worker's process and the sandboxed decoder child (:mod:`worker.media.sandbox`) read the
same object: the child gets it as JSON, by field name, so adding or reordering a setting
cannot shift another one into its place.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class DecodeLimits:
    threads: int = 0                    # decord's decoding threads (0: FFmpeg's choice)
    max_pixels: int = 4096 * 4096       # width x height above which a video is refused
    max_duration_s: float = 3 * 3600.0
    hash_rate_hz: float = 0.0           # hash frames a second for the bank (0: none)
    hash_max_frames: int = 600
    hash_max_side: int = 256            # hash frames are downscaled to this longest side
    hash_min_frames: int = 0            # a short clip still gets this many hash frames
    frame_slack: float = 0.0            # how far sampled frames may move to cheaper ones

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> "DecodeLimits":
        return cls(**document)
