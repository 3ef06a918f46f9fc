"""Where a file keeps its C2PA manifest store, found before any C2PA code runs.

In ISO BMFF (MP4, MOV, M4V) the store is a top-level ``uuid`` box with the C2PA UUID; a
file that points at a remote manifest carries XMP (a ``uuid`` box of its own) instead. A
walk over the top-level box headers tells, for the cost of a few reads: whether there is a
store at all (most uploads have none, and then no reader runs), how large it is (refused
over the cap before it is parsed), and whether its box runs past the end of the file.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from worker.media.container import sniff

C2PA_UUID = bytes.fromhex("d8fec3d61b0e483c92975828877ec481")
XMP_UUID = bytes.fromhex("be7acfcb97a942e89c71999491e3afac")

# c2pa-python's name for each container family it reads that the worker decodes.
_READER_FORMATS = {"iso-bmff": "video/mp4", "riff": "video/avi"}
_MAX_BOXES = 1_000_000


@dataclass(frozen=True)
class StoreLocation:
    reader_format: str | None       # what to hand c2pa-python; None: C2PA has no binding here
    manifest_bytes: int | None = None
    maybe_store: bool = True        # False only where the walk proved there is none
    malformed: str | None = None    # why the store's box cannot be right


def locate(path: Path) -> StoreLocation:
    with open(path, "rb") as stream:
        head = stream.read(16)
        kind = sniff(head)
        reader_format = _READER_FORMATS.get(kind)
        if kind != "iso-bmff":
            return StoreLocation(reader_format)
        size = stream.seek(0, 2)
        return _walk_bmff(stream, size)


def _walk_bmff(stream, size: int) -> StoreLocation:
    offset, stores, manifest_bytes, xmp = 0, 0, None, False
    for _ in range(_MAX_BOXES):
        if offset + 8 > size:
            break
        stream.seek(offset)
        header = stream.read(32)
        box_size, kind = struct.unpack(">I4s", header[:8])
        header_len = 8
        if box_size == 1:
            if len(header) < 16:
                break
            box_size, header_len = struct.unpack(">Q", header[8:16])[0], 16
        elif box_size == 0:
            box_size = size - offset
        if box_size < header_len:
            break  # not a box structure: the decoder judges the file
        if kind == b"uuid" and len(header) >= header_len + 16:
            uuid = header[header_len:header_len + 16]
            if uuid == C2PA_UUID:
                stores += 1
                manifest_bytes = box_size
                if offset + box_size > size:
                    return StoreLocation("video/mp4", box_size, malformed=(
                        f"the C2PA box claims {box_size} bytes, past the end of the file"))
            elif uuid == XMP_UUID:
                xmp = True
        offset += box_size
    if stores > 1:
        return StoreLocation("video/mp4", manifest_bytes, malformed=f"{stores} C2PA boxes; a file has at most one")
    return StoreLocation("video/mp4", manifest_bytes, maybe_store=stores > 0 or xmp)
