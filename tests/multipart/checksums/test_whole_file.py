"""Whole-file CRCs combined from part CRCs, checked against independent implementations of each CRC."""

from __future__ import annotations

import base64
import random
import zlib

import crc32c
import pytest
from awscrt import checksums

from airflow_mpu_provider.multipart.checksums import whole_file
from airflow_mpu_provider.multipart.checksums.whole_file import (
    COMPOSITE,
    FULL_OBJECT,
    checksum_type_mismatch,
    combine_crc,
    combine_crc_python,
    complete_refuses_type,
    crc_hex,
    crc_to_b64,
    describe_whole_file,
    full_object_checksum,
    reported_checksum,
    resolve_checksum_type,
    stored_checksum_type,
)
from airflow_mpu_provider.multipart.errors import InvalidUploadRequest

#: Independent references: the CRC of a whole byte string, by libraries that share no code with ours.
REFERENCES = {"CRC32": zlib.crc32, "CRC32C": crc32c.crc32c, "CRC64NVME": checksums.crc64nvme}
ALGORITHMS = sorted(REFERENCES)


def _b64(algorithm: str, data: bytes) -> str:
    return crc_to_b64(algorithm, REFERENCES[algorithm](data))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_python_combine_equals_the_crc_of_the_concatenation(algorithm):
    rng = random.Random(algorithm)
    crc = REFERENCES[algorithm]
    for _ in range(200):
        a = rng.randbytes(rng.randrange(0, 2000))
        b = rng.randbytes(rng.choice([0, 1, 7, rng.randrange(0, 5000)]))
        assert combine_crc_python(algorithm, crc(a), crc(b), len(b)) == crc(a + b)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_python_combine_agrees_with_awscrt_where_awscrt_has_one(algorithm):
    crt = getattr(checksums, f"combine_{algorithm.lower()}", None)
    if crt is None:
        pytest.skip(f"awscrt {checksums.__name__} has no combine_{algorithm.lower()} (awscrt < 0.31)")
    rng = random.Random(7)
    for length in (0, 1, 5 * 1024 * 1024, 5 * 1024**3, 2**40 + 3):
        crc1, crc2 = rng.getrandbits(32 if algorithm != "CRC64NVME" else 64), rng.getrandbits(32)
        crc2 = crc2 if length else 0  # the only CRC of zero bytes
        assert combine_crc_python(algorithm, crc1, crc2, length) == crt(crc1, crc2, length)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_whole_file_checksum_of_parts_of_any_sizes_is_the_crc_of_the_file(algorithm):
    rng = random.Random(3)
    data = rng.randbytes(300_001)
    cuts = sorted(rng.sample(range(1, len(data)), 40))
    pieces = [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    parts = [(_b64(algorithm, p), len(p)) for p in pieces]
    assert full_object_checksum(algorithm, parts) == _b64(algorithm, data)
    assert full_object_checksum(algorithm, parts[:1]) == _b64(algorithm, pieces[0])
    # Order matters: parts swapped give another CRC (the combine is not a plain xor of values).
    assert full_object_checksum(algorithm, [parts[1], parts[0], *parts[2:]]) != _b64(algorithm, data)


def test_the_pure_python_path_is_taken_without_awscrt_combine(monkeypatch):
    """The declared floor (awscrt 0.23) has no combine functions: the Python combine must give the same."""
    data = random.Random(1).randbytes(70_000)
    parts = [(_b64("CRC32C", data[i : i + 9_999]), len(data[i : i + 9_999])) for i in range(0, len(data), 9_999)]
    monkeypatch.setattr(whole_file, "_crt_checksums", None)
    assert full_object_checksum("CRC32C", parts) == _b64("CRC32C", data)


def test_combine_refuses_what_is_not_a_crc():
    with pytest.raises(ValueError, match="not a CRC"):
        combine_crc("SHA256", 1, 2, 3)
    with pytest.raises(ValueError, match="not a CRC32C checksum"):
        full_object_checksum("CRC32C", [(base64.b64encode(b"12345678").decode(), 8)])
    with pytest.raises(ValueError, match="at least one part"):
        full_object_checksum("CRC32C", [])


def test_the_log_line_gives_base64_and_the_hex_crc_tools_print():
    data = b"123456789"  # the CRC catalogue's check input: CRC-32C check value 0xe3069283
    value = _b64("CRC32C", data)
    assert crc_hex("CRC32C", value) == "e3069283"
    assert describe_whole_file("CRC32C", value) == f"CRC32C of the whole file: {value} (hex e3069283)"
    assert crc_hex("CRC64NVME", _b64("CRC64NVME", data)) == "ae8b14860a799888"  # CRC-64/NVME check value


# -- which type, and refusals -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "requested", "expected"),
    [
        ("CRC32C", None, FULL_OBJECT),
        ("CRC32", None, FULL_OBJECT),
        ("CRC64NVME", None, FULL_OBJECT),
        ("SHA256", None, COMPOSITE),
        ("SHA1", None, COMPOSITE),
        ("CRC32C", "composite", COMPOSITE),
        ("CRC32C", " FULL_OBJECT ", FULL_OBJECT),
        ("SHA1", "COMPOSITE", COMPOSITE),
        (None, None, None),
    ],
)
def test_resolve_checksum_type(algorithm, requested, expected):
    assert resolve_checksum_type(requested, algorithm) == expected


@pytest.mark.parametrize(
    ("algorithm", "requested", "message"),
    [
        ("SHA256", "FULL_OBJECT", "works only with checksum_algorithm 'CRC32', 'CRC32C' or 'CRC64NVME'"),
        ("SHA1", "FULL_OBJECT", "use checksum_type='COMPOSITE' with SHA1"),
        ("CRC64NVME", "COMPOSITE", "supports CRC64NVME only as a FULL_OBJECT checksum"),
        (None, "FULL_OBJECT", "needs a checksum_algorithm"),
        ("CRC32C", "WHOLE", "is not a checksum type"),
        ("CRC32C", 1, "must be 'FULL_OBJECT', 'COMPOSITE' or None"),
    ],
)
def test_impossible_combinations_are_refused_with_what_to_do(algorithm, requested, message):
    with pytest.raises(InvalidUploadRequest, match=message):
        resolve_checksum_type(requested, algorithm)


def test_the_type_of_a_stored_upload():
    assert stored_checksum_type("full_object", "CRC32C") == FULL_OBJECT
    assert stored_checksum_type(None, "CRC32C") == COMPOSITE  # S3's default for CRC32C
    assert stored_checksum_type(None, "CRC64NVME") == FULL_OBJECT
    assert stored_checksum_type(None, None) is None  # nothing said (moto's ListParts): unknown
    assert checksum_type_mismatch(COMPOSITE, FULL_OBJECT) == (
        "the earlier upload used checksum type COMPOSITE, this one uses FULL_OBJECT"
    )
    assert checksum_type_mismatch(None, FULL_OBJECT) is None
    assert checksum_type_mismatch(FULL_OBJECT, FULL_OBJECT) is None


def test_which_complete_errors_mean_the_store_refuses_the_type():
    assert complete_refuses_type("NotImplemented", "A header you provided implies functionality not implemented")
    assert complete_refuses_type("InvalidArgument", "Unsupported x-amz-checksum-type header")
    # A refused value (the checksum does not match the bytes) is corruption, never a missing feature.
    assert not complete_refuses_type("InvalidRequest", "The FULL_OBJECT checksum did not match the object")
    assert not complete_refuses_type("BadDigest", "The checksum type FULL_OBJECT is wrong")
    assert not complete_refuses_type("InternalError", "checksum type")


def test_reported_checksum_and_its_type():
    assert reported_checksum({"ChecksumCRC32C": "abc=", "ChecksumType": "FULL_OBJECT"}, "CRC32C") == (
        "abc=",
        FULL_OBJECT,
    )
    assert reported_checksum({"ChecksumCRC32C": "abc=-3"}, "CRC32C") == ("abc=-3", COMPOSITE)
    assert reported_checksum({"ChecksumCRC32C": "abc="}, "CRC32C") == ("abc=", None)
    assert reported_checksum({"ChecksumSHA256": "x"}, "CRC32C") == (None, None)
