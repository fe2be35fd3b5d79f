from __future__ import annotations

import base64
import hashlib

import pytest
from awscrt import checksums

from airflow_mpu_provider.multipart.checksums.digests import (
    checksum_b64,
    composite_checksum,
    composite_matches,
    digest_part,
    md5_from_etag,
    multipart_etag,
    normalize_checksum_algorithm,
    part_matches,
)
from airflow_mpu_provider.multipart.errors import InvalidUploadRequest


def test_crc32c_is_s3s_base64_big_endian_form():
    expected = base64.b64encode(checksums.crc32c(b"hello").to_bytes(4, "big")).decode()
    assert checksum_b64("CRC32C", b"hello") == expected


def test_sha256_matches_hashlib():
    assert checksum_b64("SHA256", b"x") == base64.b64encode(hashlib.sha256(b"x").digest()).decode()


@pytest.mark.parametrize("value", [None, "md5", "none", "NONE"])
def test_md5_only_modes(value):
    assert normalize_checksum_algorithm(value) is None


def test_unknown_algorithm_names_the_choices():
    with pytest.raises(InvalidUploadRequest, match="CRC32C"):
        normalize_checksum_algorithm("adler32")


def test_multipart_etag_is_md5_of_part_md5s():
    a, b = hashlib.md5(b"a").digest(), hashlib.md5(b"b").digest()
    assert multipart_etag([a, b]) == f'"{hashlib.md5(a + b).hexdigest()}-2"'


def test_composite_checksum():
    parts = [checksum_b64("CRC32C", b"a"), checksum_b64("CRC32C", b"b")]
    raw = b"".join(base64.b64decode(p) for p in parts)
    assert composite_checksum("CRC32C", parts) == checksum_b64("CRC32C", raw) + "-2"


def test_md5_from_etag():
    md5 = hashlib.md5(b"a").digest()
    assert md5_from_etag(f'"{md5.hex()}"') == md5
    assert md5_from_etag('"abc-2"') is None
    assert md5_from_etag(None) is None


def test_part_matches_prefers_checksum_then_etag_and_refuses_to_guess():
    digest = digest_part(1, b"data", algorithm="CRC32C", with_md5=True)
    etag = f'"{hashlib.md5(b"data").hexdigest()}"'
    assert part_matches(digest, {"ChecksumCRC32C": digest.checksum, "Size": 4}, "CRC32C") is True
    assert part_matches(digest, {"ChecksumCRC32C": "AAAAAA==", "ETag": etag}, "CRC32C") is False
    assert part_matches(digest, {"ETag": etag}, "CRC32C") is True
    assert part_matches(digest, {"ETag": '"' + "0" * 32 + '"'}, "CRC32C") is False
    assert part_matches(digest, {"ETag": etag, "Size": 5}, "CRC32C") is False
    no_md5 = digest_part(1, b"data", algorithm="CRC32C", with_md5=False)
    assert part_matches(no_md5, {"ETag": etag}, "CRC32C") is None
    assert part_matches(digest, {"ETag": '"kms-opaque"'}, "CRC32C") is None


@pytest.mark.parametrize(
    ("reported", "expected", "matches"),
    [
        ("abc=-3", "abc=-3", True),  # AWS: value-N
        ("abc=", "abc=-3", True),  # moto's HeadObject leaves out -N
        ("abc=-2", "abc=-3", False),  # another part count is another object
        ("xyz=", "abc=-3", False),
        (None, "abc=-3", False),
        ("abc=-3", None, False),  # nothing expected: nothing can be verified
    ],
)
def test_composite_matches_takes_the_value_with_or_without_the_part_count(reported, expected, matches):
    assert composite_matches(reported, expected) is matches


def test_an_echoed_checksum_does_not_hide_a_wrong_etag():
    """Part 1 goes with its MD5 before the store's first echo: its ETag is compared too, not only the echo
    (a store that does not check the checksum echoes whatever it was sent, whatever bytes it stored)."""
    digest = digest_part(1, b"data", algorithm="CRC32C", with_md5=True)
    other = f'"{hashlib.md5(b"dat4").hexdigest()}"'
    assert part_matches(digest, {"ChecksumCRC32C": digest.checksum, "ETag": other}, "CRC32C") is False
    assert part_matches(digest, {"ChecksumCRC32C": digest.checksum, "ETag": other}, "CRC32C", etag_is_md5=False)
