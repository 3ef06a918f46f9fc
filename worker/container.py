"""Recognising a video container from its first bytes, and spotting a truncated MP4.

FFmpeg reports a truncated MP4 and a file of random bytes with the same error, yet they
need different dead-letter reasons: the first is a broken upload worth retrying, the second
is not a video at all. Walking the ISO BMFF top-level boxes tells them apart cheaply,
before the decoder runs.
"""
from __future__ import annotations

import struct
from typing import BinaryIO

_SIGNATURES = (
    (4, b"ftyp", "iso-bmff"),          # MP4, MOV, 3GP
    (4, b"moov", "iso-bmff"),
    (4, b"mdat", "iso-bmff"),
    (4, b"free", "iso-bmff"),
    (4, b"wide", "iso-bmff"),
    (0, b"\x1a\x45\xdf\xa3", "matroska"),  # MKV, WebM
    (0, b"RIFF", "riff"),              # AVI
    (0, b"FLV", "flv"),
    (0, b"OggS", "ogg"),
    (0, b"\x00\x00\x01\xba", "mpeg-ps"),
    (0, b"\x47", "mpeg-ts"),
)


def sniff(head: bytes) -> str | None:
    """The container family of a file from its first bytes, or None if unknown."""
    for offset, magic, name in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            if name == "mpeg-ts" and not (len(head) > 188 and head[188] == 0x47):
                continue
            return name
    return None


def iso_bmff_truncated(stream: BinaryIO, size: int) -> bool:
    """True if a top-level box claims to run past the end of the file."""
    offset = 0
    while offset < size:
        stream.seek(offset)
        header = stream.read(16)
        if len(header) < 8:
            return True
        box_size = struct.unpack(">I", header[:4])[0]
        if box_size == 1:
            if len(header) < 16:
                return True
            box_size = struct.unpack(">Q", header[8:16])[0]
        elif box_size == 0:  # the box runs to the end of the file
            return False
        if box_size < 8:
            return False  # not a box structure we can follow; let the decoder judge
        offset += box_size
    return offset > size
