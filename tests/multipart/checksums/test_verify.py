"""The verdict on a completed object from S3's answers (pure; the engine's use of it is tested over HTTP)."""

from __future__ import annotations

import base64
import hashlib
import zlib

import crc32c
import pytest

from airflow_mpu_provider.multipart.checksums.digests import multipart_etag
from airflow_mpu_provider.multipart.checksums.verify import expected_from_parts, identify, judge
from airflow_mpu_provider.multipart.checksums.whole_file import complete_refuses_checksums, complete_wants_checksums
from airflow_mpu_provider.multipart.parts.record import PartRecord

PIECES = [b"a" * 100, b"b" * 100, b"c" * 7]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def crc32c_of(data: bytes) -> str:
    return b64(crc32c.crc32c(data).to_bytes(4, "big"))


def crc32_of(data: bytes) -> str:
    return b64(zlib.crc32(data).to_bytes(4, "big"))


def records(*, md5: bool = True) -> list[PartRecord]:
    return [
        PartRecord(
            n,
            len(p),
            f'"{hashlib.md5(p).hexdigest()}"',
            crc32c_of(p),
            "CRC32C",
            hashlib.md5(p).digest() if md5 else None,
        )
        for n, p in enumerate(PIECES, start=1)
    ]


def expected(*, md5: bool = True, full_object_asked: bool = False):
    return expected_from_parts(records(md5=md5), 207, "CRC32C", etags_are_md5=True, full_object_asked=full_object_asked)


def test_what_the_parts_predict():
    e = expected()
    assert e.etag == multipart_etag(hashlib.md5(p).digest() for p in PIECES)
    assert e.whole == crc32c_of(b"".join(PIECES))
    assert e.composite.endswith("-3")
    assert expected(md5=False).etag is None  # a part without its MD5: no ETag to predict
    assert expected_from_parts(records(), 207, "CRC32C", etags_are_md5=False, full_object_asked=False).etag is None


def test_a_composite_without_its_part_count_labelled_composite_is_compared_not_waved_through():
    """#19.6: the store ignored FULL_OBJECT and left out -N; its value must be the parts' composite."""
    e = expected(md5=False, full_object_asked=True)
    good = judge(
        e,
        {"ETag": '"x-3"'},
        {"ContentLength": 207, "ChecksumCRC32C": e.composite.split("-")[0], "ChecksumType": "COMPOSITE"},
    )
    assert good.checksum_problem is None and good.checksum == e.composite and good.checksum_type == "COMPOSITE"
    assert any("ignored ChecksumType=FULL_OBJECT" in n for n in good.notes)
    bad = judge(e, {"ETag": '"x-3"'}, {"ContentLength": 207, "ChecksumCRC32C": "AAAAAA==", "ChecksumType": "COMPOSITE"})
    assert bad.checksum_problem and "expected the composite" in bad.checksum_problem and bad.checksum is None


def test_a_checksum_the_store_does_not_keep_is_never_reported():
    verdict = judge(expected(), {"ETag": expected().etag}, {"ContentLength": 207})
    assert verdict.verified == ["size", "ETag"] and (verdict.checksum, verdict.checksum_type) == (None, None)


def test_a_value_of_the_file_under_another_algorithm_is_named():
    """#19.7: moto without crc32c reports CRC32 (whole-file, or the composite of part CRC32s) as CRC32C."""
    parts = [(crc32_of(p), len(p)) for p in PIECES]
    whole = crc32_of(b"".join(PIECES))
    composite = b64(zlib.crc32(b"".join(base64.b64decode(c) for c, _ in parts)).to_bytes(4, "big"))
    assert identify(whole, "CRC32C", {"CRC32": parts}) == ("CRC32", "whole-file")
    assert identify(composite, "CRC32C", {"CRC32": parts}) == ("CRC32", "composite")
    assert identify("AAAAAA==", "CRC32C", {"CRC32": parts}) is None


@pytest.mark.parametrize(
    ("code", "message", "refuses"),
    [
        ("MalformedXML", "The XML you provided was not well-formed", True),  # OpenStack Swift
        ("InvalidRequest", "Checksum Type mismatch occurred", True),  # Wasabi
        ("InvalidArgument", "x-amz-checksum-crc32c is not supported", True),
        ("InvalidRequest", "The bucket is locked", False),
        ("InternalError", "checksum", False),
    ],
)
def test_which_complete_errors_are_the_store_refusing_checksums(code, message, refuses):
    assert complete_refuses_checksums(code, message) is refuses


def test_a_complete_refused_for_lacking_the_checksums():
    assert complete_wants_checksums(
        "InvalidRequest",
        "The upload was created using a crc32c checksum. The complete request must include the checksum for each part.",
    )
    assert not complete_wants_checksums("InvalidRequest", "Checksum Type mismatch occurred")
