"""Container sniffing and the truncated-MP4 check, on a real sample and on built boxes."""
from __future__ import annotations

import io
import struct

import pytest

from worker.media.container import iso_bmff_truncated, sniff
from worker.testing.samples import sample_video


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def large_box(kind: bytes, payload: bytes, claimed: int | None = None) -> bytes:
    size = 16 + len(payload) if claimed is None else claimed
    return struct.pack(">I", 1) + kind + struct.pack(">Q", size) + payload


FTYP = box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2mp41")


def truncated(data: bytes) -> bool:
    return iso_bmff_truncated(io.BytesIO(data), len(data))


@pytest.fixture(scope="module")
def carphone() -> bytes:
    return sample_video("carphone_pristine.mp4").read_bytes()


def test_sniff_the_real_mp4(carphone):
    assert sniff(carphone[:64]) == "iso-bmff"


@pytest.mark.parametrize("head,family", [
    (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00", "iso-bmff"),
    (b"\x00\x00\x00\x08moov", "iso-bmff"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01", "matroska"),
    (b"RIFF\x24\x10\x00\x00AVI LIST", "riff"),
    (b"FLV\x01\x05", "flv"),
    (b"OggS\x00\x02", "ogg"),
    (b"\x47" + bytes(187) + b"\x47" + bytes(10), "mpeg-ts"),
])
def test_sniff_recognises_containers(head, family):
    assert sniff(head) == family


@pytest.mark.parametrize("head", [
    b"Hello, this is a text file and not a video at all.\n",
    b"GIF89a\x01\x00\x01\x00",              # starts like MPEG-TS (0x47) but has no second sync byte
    b"{\"video_id\": \"vid-1\"}",
    b"",
    b"\x00\x00",
])
def test_sniff_returns_none_for_other_bytes(head):
    assert sniff(head) is None


def test_the_real_sample_is_not_truncated():
    path = sample_video("carphone_pristine.mp4")
    with path.open("rb") as stream:
        assert iso_bmff_truncated(stream, path.stat().st_size) is False


def test_the_first_half_of_the_real_sample_is_truncated(carphone, tmp_path):
    half = tmp_path / "half.mp4"
    half.write_bytes(carphone[:len(carphone) // 2])
    with half.open("rb") as stream:
        assert iso_bmff_truncated(stream, half.stat().st_size) is True
    assert sniff(half.read_bytes()[:64]) == "iso-bmff"  # still looks like an MP4


def test_boxes_that_end_exactly_at_the_end_of_file():
    assert truncated(FTYP + box(b"free", b"") + box(b"mdat", bytes(100))) is False


def test_a_box_cut_short_is_truncated():
    whole = FTYP + box(b"mdat", bytes(100))
    assert truncated(whole[:-1]) is True
    assert truncated(whole + b"\x00\x00\x00") is True  # a box header cut after 3 bytes


def test_a_64_bit_largesize_box():
    payload = bytes(1000)
    assert truncated(FTYP + large_box(b"mdat", payload)) is False
    assert truncated(FTYP + large_box(b"mdat", payload, claimed=16 + len(payload) + 1)) is True
    # a largesize past 4 GiB, in a small file: the header claims far more than is there
    assert truncated(FTYP + large_box(b"mdat", payload, claimed=5 << 30)) is True
    # the 64-bit size field itself cut off
    assert truncated(FTYP + struct.pack(">I", 1) + b"mdat" + b"\x00\x00") is True


def test_a_box_that_runs_to_the_end_of_the_file():
    assert truncated(FTYP + struct.pack(">I", 0) + b"mdat" + bytes(50)) is False
