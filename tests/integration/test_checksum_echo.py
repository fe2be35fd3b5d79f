"""Parts name their checksum algorithm, as every AWS SDK does, so stores that echo on request echo.

Over plain HTTP through the proxy, which records what crosses the wire. moto echoes a part's
``x-amz-checksum-*`` only when the request carries ``x-amz-sdk-checksum-algorithm``; AWS always does. Once
a store has echoed, later parts are verified by their echo and carry no Content-MD5 (the hashing pass
the engine saves); against a store that echoes nothing every part keeps its MD5 and the object's ETag is
verified. moto echoes without checking, so the corruption test below shows what still catches a part
whose bytes differ from its checksum: the whole-file CRC that moto computes from the bytes it stored.
"""

from __future__ import annotations

import base64
import hashlib
import logging

import crc32c
import pytest

from airflow_mpu_provider.multipart import UploadOptions, upload_file
from airflow_mpu_provider.multipart.errors import IntegrityError
from airflow_mpu_provider.multipart.upload import MultipartUpload
from tests.conftest import MiB, make_file, sha256_file, sha256_object
from tests.integration.conftest import BUCKET, FakeTaskInstance, upload_operator
from tests.support.local_airflow import SIGNED_PAYLOAD, s3_client, store_echoes_no_checksums

pytestmark = pytest.mark.integration

SIZE = 16 * MiB + 5  # parts of 5, 5, 5 and 1 MiB + 5 bytes
PART = 5 * MiB


def sent_parts(proxy) -> list[tuple[int, dict[str, str]]]:
    """(part number, lower-cased request headers) of each UploadPart the store accepted, in part order."""
    parts = [r for r in proxy.requests() if r.kind == "UploadPart" and r.status == 200]
    return sorted((r.part_number, {k.lower(): v for k, v in r.headers.items()}) for r in parts)


def part_bytes(path, number: int) -> bytes:
    data = path.read_bytes()
    return data[(number - 1) * PART : number * PART]


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


@pytest.mark.parametrize("signed", [False, True])
def test_parts_name_the_algorithm_and_drop_md5_once_the_store_has_echoed(connection, proxy, s3, tmp_path, signed):
    """Over plain HTTP (payload signing left to botocore) every part carries an MD5, which makes its payload
    UNSIGNED (cheaper than the signer's SHA-256 pass over a file part); with payload signing set (as over
    HTTPS, where an MD5 spares nothing) the MD5 is dropped once the store has echoed a checksum."""
    path = make_file(tmp_path / "f", SIZE)
    key = f"echo/operator-{signed}.bin"
    proxy.reset_counts()
    conn = connection(config_kwargs=SIGNED_PAYLOAD) if signed else connection()
    result = upload_operator(conn, path, key, concurrency=1).execute({"ti": FakeTaskInstance()})
    parts = sent_parts(proxy)
    assert [n for n, _ in parts] == [1, 2, 3, 4] == list(range(1, result["parts_sent"] + 1))
    for number, headers in parts:
        body = part_bytes(path, number)
        assert headers["x-amz-sdk-checksum-algorithm"] == "CRC32C"
        assert headers["x-amz-checksum-crc32c"] == b64(crc32c.crc32c(body).to_bytes(4, "big"))
        if not signed:  # MD5 on every part, and an unsigned payload
            assert headers["content-md5"] == b64(hashlib.md5(body).digest())
            assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
        elif number == 1:  # before the store's first answer: MD5 too; the payload signed as the user set
            assert headers["content-md5"] == b64(hashlib.md5(body).digest())
            assert headers["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
        else:  # verified by the echo
            assert "content-md5" not in headers
            assert headers["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
    whole = b64(crc32c.crc32c(path.read_bytes()).to_bytes(4, "big"))
    assert (result["checksum"], result["checksum_type"]) == (whole, "FULL_OBJECT")
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)


@pytest.mark.parametrize("algorithm", ["CRC32C", None])
def test_a_store_that_echoes_nothing_gets_an_md5_with_every_part_and_the_etag_is_verified(
    proxy, s3, tmp_path, caplog, algorithm
):
    path = make_file(tmp_path / "f", SIZE)
    key = f"echo/silent-{algorithm}.bin"
    client = s3_client(proxy.url)
    store_echoes_no_checksums(client)
    proxy.reset_counts()
    options = UploadOptions(concurrency=1, progress_interval=0, checksum_algorithm=algorithm)
    with caplog.at_level(logging.INFO):
        result = upload_file(client, path, BUCKET, key, part_size=PART, options=options)
    parts = sent_parts(proxy)
    assert len(parts) == 4
    for number, headers in parts:
        assert headers["content-md5"] == b64(hashlib.md5(part_bytes(path, number)).digest())
        assert "x-amz-sdk-checksum-algorithm" not in headers
        assert ("x-amz-checksum-crc32c" in headers) is (algorithm is not None)
    assert result.etag.endswith("-4")
    assert "verified size, ETag" in caplog.text
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)


@pytest.mark.parametrize(
    ("checksum_type", "message"),
    [
        ("FULL_OBJECT", "full-object checksum CRC32C is .*The object is corrupt"),
        ("COMPOSITE", "checksum CRC32C is .*, expected the composite .*The object is corrupt"),
    ],
)
def test_a_part_whose_bytes_differ_from_its_checksum_after_md5_was_dropped_fails_the_upload(
    proxy, s3, tmp_path, monkeypatch, checksum_type, message
):
    """A byte flipped between hashing and sending (bad RAM, a buggy proxy) in a part sent without MD5.

    AWS would refuse the part (its CRC does not match); moto stores it and echoes the CRC it was given,
    so the part passes, and the object checksum moto computes at Complete from the bytes it stored (the
    whole file's CRC, or the composite of the parts' CRCs, which its HeadObject reports without "-N")
    is what must catch it.
    """
    path = make_file(tmp_path / "f", SIZE)
    key = f"echo/corrupt-{checksum_type}.bin"
    real_put = MultipartUpload.put_part
    corrupted = []

    def flip_a_byte_of_part_3(self, number, data, digest, **kwargs):
        if number == 3:
            assert digest.md5 is None, "part 3 was expected to go without Content-MD5"
            data = bytes([data[0] ^ 0x01]) + data[1:]
            corrupted.append(number)
        return real_put(self, number, data, digest, **kwargs)

    monkeypatch.setattr(MultipartUpload, "put_part", flip_a_byte_of_part_3)
    options = UploadOptions(concurrency=1, progress_interval=0, checksum_type=checksum_type)
    with pytest.raises(IntegrityError, match=message):
        upload_file(s3_client(proxy.url, **SIGNED_PAYLOAD), path, BUCKET, key, part_size=PART, options=options)
    assert corrupted == [3]


def test_a_composite_upload_whose_complete_answer_has_no_checksum_is_verified_by_head_object(
    proxy, s3, tmp_path, caplog
):
    """Parts after the store's first echo carry no MD5, so the ETag cannot be predicted; moto answers
    Complete without the object's checksum, so the composite checksum must come from HeadObject, or only
    the size would be verified."""
    path = make_file(tmp_path / "f", SIZE)
    key = "echo/composite.bin"
    proxy.reset_counts()
    options = UploadOptions(concurrency=1, progress_interval=0, checksum_type="COMPOSITE")
    with caplog.at_level(logging.INFO):
        result = upload_file(s3_client(proxy.url, **SIGNED_PAYLOAD), path, BUCKET, key, part_size=PART, options=options)
    data = path.read_bytes()
    part_crcs = b"".join(crc32c.crc32c(data[i : i + PART]).to_bytes(4, "big") for i in range(0, len(data), PART))
    expected = f"{b64(crc32c.crc32c(part_crcs).to_bytes(4, 'big'))}-4"
    assert (result.checksum, result.checksum_type) == (expected, "COMPOSITE")
    assert "verified size, CRC32C checksum." in caplog.text
    assert "only the size could be verified" not in caplog.text
    heads = [r for r in proxy.requests() if r.kind == "HeadObject"]
    assert heads and all(r.headers.get("x-amz-checksum-mode") == "ENABLED" for r in heads[-1:])
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
