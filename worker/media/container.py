"""Recognising a video container from its first bytes, and spotting a truncated MP4.

FFmpeg reports a truncated MP4 and a file of random bytes with the same error, yet they
need different dead-letter reasons: the first is a broken upload worth retrying, the second
is not a video at all. Walking the ISO BMFF top-level boxes tells them apart cheaply,
before the decoder runs.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
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


def iter_boxes(stream: BinaryIO, start: int, end: int):
    """(type, payload offset, payload end) of the boxes between ``start`` and ``end``."""
    offset = start
    while offset + 8 <= end:
        stream.seek(offset)
        header = stream.read(16)
        if len(header) < 8:
            return
        size, kind = struct.unpack(">I4s", header[:8])
        header_len = 8
        if size == 1 and len(header) >= 16:
            size, header_len = struct.unpack(">Q", header[8:16])[0], 16
        elif size == 0:
            size = end - offset
        if size < header_len or offset + size > end:
            return
        yield kind, offset + header_len, offset + size
        offset += size


def _rotation(matrix: tuple[int, ...]) -> int:
    """Clockwise display rotation in degrees from a tkhd matrix (a, b, u, c, d, v, x, y, w)."""
    a, b, _, c, d, _ = matrix[:6]
    one = 1 << 16
    return {(one, 0, 0, one): 0, (0, one, -one, 0): 90, (-one, 0, 0, -one): 180,
            (0, -one, one, 0): 270}.get((a, b, c, d), 0)


@dataclass(frozen=True)
class VideoTrack:
    width: int
    height: int
    rotation: int       # degrees clockwise, as the video is meant to be shown
    matrix_offset: int  # where the track header's display matrix starts in the file


IDENTITY_MATRIX = struct.pack(">9i", 1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)


def mp4_track_handlers(stream: BinaryIO, size: int) -> list[bytes]:
    """The handler type of each track (b"vide", b"soun", ...) that the moov box describes."""
    handlers = []
    for kind, start, end in iter_boxes(stream, 0, size):
        if kind != b"moov":
            continue
        for trak_kind, trak_start, trak_end in iter_boxes(stream, start, end):
            for box, box_start, box_end in iter_boxes(stream, trak_start, trak_end):
                if trak_kind == b"trak" and box == b"mdia":
                    for sub, sub_start, _ in iter_boxes(stream, box_start, box_end):
                        if sub == b"hdlr":
                            stream.seek(sub_start + 8)
                            handlers.append(stream.read(4))
    return handlers


def mp4_video_track(stream: BinaryIO, size: int) -> VideoTrack | None:
    """Size and display rotation of the first video track of an MP4, from its headers alone
    (nothing is decoded), or None if there is no such track to read.

    This is how the worker refuses a decompression bomb before decoding a frame, and how it
    learns that a phone video is meant to be shown rotated.
    """
    for kind, start, end in iter_boxes(stream, 0, size):
        if kind != b"moov":
            continue
        for trak_kind, trak_start, trak_end in iter_boxes(stream, start, end):
            if trak_kind != b"trak":
                continue
            header = None
            handler = None
            for box, box_start, box_end in iter_boxes(stream, trak_start, trak_end):
                if box == b"tkhd":
                    tkhd_at = box_start
                    stream.seek(box_start)
                    header = stream.read(min(box_end - box_start, 104))
                elif box == b"mdia":
                    for sub, sub_start, _ in iter_boxes(stream, box_start, box_end):
                        if sub == b"hdlr":
                            stream.seek(sub_start + 8)
                            handler = stream.read(4)
            if handler != b"vide" or header is None:
                continue
            version = header[0]
            matrix_at = 40 if version == 0 else 52
            if len(header) < matrix_at + 44:
                return None
            matrix = struct.unpack(">9i", header[matrix_at:matrix_at + 36])
            width, height = struct.unpack(">II", header[matrix_at + 36:matrix_at + 44])
            return VideoTrack(width >> 16, height >> 16, _rotation(matrix), tkhd_at + matrix_at)
    return None


def mp4_video_sample_count(stream: BinaryIO, size: int) -> int | None:
    """How many samples (frames) the first video track's sample table lists, or None."""
    def child(start: int, end: int, kind: bytes):
        return next(((s, e) for k, s, e in iter_boxes(stream, start, end) if k == kind), None)

    for kind, start, end in iter_boxes(stream, 0, size):
        if kind != b"moov":
            continue
        for trak_kind, trak_start, trak_end in iter_boxes(stream, start, end):
            mdia = child(trak_start, trak_end, b"mdia") if trak_kind == b"trak" else None
            hdlr = child(*mdia, b"hdlr") if mdia else None
            if hdlr is None:
                continue
            stream.seek(hdlr[0] + 8)
            if stream.read(4) != b"vide":
                continue
            minf = child(*mdia, b"minf")
            stbl = child(*minf, b"stbl") if minf else None
            stsz = child(*stbl, b"stsz") if stbl else None
            if stsz is None:
                return None
            stream.seek(stsz[0] + 8)
            raw = stream.read(4)
            return struct.unpack(">I", raw)[0] if len(raw) == 4 else None
    return None


def mp4_without_tracks(stream: BinaryIO, size: int) -> bool:
    """True for an MP4 whose moov box is well formed but describes no track at all."""
    for kind, start, end in iter_boxes(stream, 0, size):
        if kind == b"moov":
            children = list(iter_boxes(stream, start, end))
            covered = sum(child_end - child_start + 8 for _, child_start, child_end in children)
            return covered == end - start and all(k != b"trak" for k, _, _ in children)
    return False
