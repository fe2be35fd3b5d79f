"""compare_object: is the object at a key exactly a local file? Never a false "yes"."""

from __future__ import annotations

import base64
import hashlib

import pytest
from botocore.exceptions import ClientError

from airflow_mpu_provider.multipart.checksums.compare import CRC_ONLY, _fingerprint, compare_object
from airflow_mpu_provider.multipart.checksums.digests import checksum_b64, composite_checksum, multipart_etag
from airflow_mpu_provider.multipart.errors import S3UploadError, UploadCancelledError
from airflow_mpu_provider.multipart.file_engine import FileUploadEngine
from airflow_mpu_provider.multipart.options import UploadOptions
from airflow_mpu_provider.multipart.parts.plan import plan_parts
from airflow_mpu_provider.multipart.sources.file import FileSource
from airflow_mpu_provider.multipart.units import MiB
from tests.conftest import make_file

BUCKET = "test-bucket"


def upload(client, path, key: str, part_size: int = 5 * MiB, checksum: str | None = "CRC32C") -> None:
    with FileSource(path) as source:
        FileUploadEngine(
            client,
            bucket=BUCKET,
            key=key,
            source=source,
            plan=plan_parts(source.size, part_size),
            options=UploadOptions(checksum_algorithm=checksum, progress_interval=0),
        ).run()


@pytest.mark.parametrize("checksum", ["CRC32C", "SHA256", None])
@pytest.mark.parametrize("part_size", [5 * MiB, 6 * MiB])
def test_a_multipart_object_of_the_file_matches_whatever_its_part_size(mock_s3, tmp_path, checksum, part_size):
    path = make_file(tmp_path / "f", 13 * MiB + 7)
    upload(mock_s3, path, "k", part_size, checksum)
    with FileSource(path) as source:
        # The object's own part size is read from S3 (HeadObject PartNumber=1), not taken from the caller.
        comparison = compare_object(mock_s3, BUCKET, "k", source, part_size_hint=16 * MiB)
        assert comparison.exists and comparison.matches, comparison.detail


def test_a_single_request_object_matches_by_checksum_or_md5(mock_s3, tmp_path):
    path = make_file(tmp_path / "f", 3 * MiB)
    mock_s3.put_object(Bucket=BUCKET, Key="plain", Body=path.read_bytes())
    mock_s3.put_object(Bucket=BUCKET, Key="sha", Body=path.read_bytes(), ChecksumAlgorithm="SHA256")
    with FileSource(path) as source:
        assert compare_object(mock_s3, BUCKET, "plain", source).matches
        assert compare_object(mock_s3, BUCKET, "sha", source).detail == "size and SHA256 full-object checksum"


def test_one_byte_different_same_size_does_not_match(mock_s3, tmp_path):
    path = make_file(tmp_path / "f", 11 * MiB)
    upload(mock_s3, path, "k")
    other = tmp_path / "g"
    other.write_bytes(b"\1" + path.read_bytes()[1:])
    with FileSource(other) as source:
        comparison = compare_object(mock_s3, BUCKET, "k", source)
    assert comparison.exists and not comparison.matches and "differs" in comparison.detail


def test_another_size_does_not_match_without_reading_the_file(mock_s3, tmp_path, monkeypatch):
    path = make_file(tmp_path / "f", 6 * MiB)
    upload(mock_s3, path, "k")
    shorter = make_file(tmp_path / "g", 6 * MiB - 1)
    with FileSource(shorter) as source:
        monkeypatch.setattr(source, "read", lambda *a: pytest.fail("the file was read"))
        comparison = compare_object(mock_s3, BUCKET, "k", source)
    assert not comparison.matches and "bytes, the file" in comparison.detail


def test_no_object_and_errors(mock_s3, tmp_path, monkeypatch):
    path = make_file(tmp_path / "f", 10)
    with FileSource(path) as source:
        assert compare_object(mock_s3, BUCKET, "absent", source).exists is False

        def forbidden(**kwargs):
            raise ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "HeadObject")

        monkeypatch.setattr(mock_s3, "head_object", forbidden)
        with pytest.raises(S3UploadError) as info:  # a 403 is never taken for "absent"
            compare_object(mock_s3, BUCKET, "absent", source)
        assert info.value.code == "403"


def test_cancel_stops_reading(mock_s3, tmp_path):
    import threading

    path = make_file(tmp_path / "f", 11 * MiB)
    upload(mock_s3, path, "k")
    cancel = threading.Event()
    cancel.set()
    with FileSource(path) as source, pytest.raises(UploadCancelledError):
        compare_object(mock_s3, BUCKET, "k", source, cancel=cancel)


class _Head:
    """A store's HeadObject answers, as AWS gives them (moto leaves some of these out)."""

    def __init__(self, whole: dict, part1: dict | None = None) -> None:
        self.whole, self.part1 = whole, part1

    def head_object(self, **kwargs):
        if kwargs.get("PartNumber"):
            if self.part1 is None:
                raise ClientError({"Error": {"Code": "400", "Message": "no"}}, "HeadObject")
            return self.part1
        return self.whole


def _parts(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_aws_style_composite_checksum_and_missing_part_number_support(tmp_path):
    path = make_file(tmp_path / "f", 12 * MiB)
    data = path.read_bytes()
    parts = _parts(data, 5 * MiB)
    composite = composite_checksum("CRC32C", [checksum_b64("CRC32C", p) for p in parts])
    etag = multipart_etag(hashlib.md5(p).digest() for p in parts)
    head = {"ContentLength": len(data), "ETag": etag, "ChecksumCRC32C": composite}
    with FileSource(path) as source:
        # PartNumber=1 is not supported by this store: the plan's part size is the fallback.
        assert compare_object(_Head(head), BUCKET, "k", source, part_size_hint=5 * MiB).matches
        assert not compare_object(_Head(head), BUCKET, "k", source, part_size_hint=6 * MiB).matches
        assert compare_object(_Head(head, {"ContentLength": 5 * MiB}), BUCKET, "k", source).matches


def test_full_object_crc64nvme_as_s3_reports_for_new_objects(tmp_path):
    from awscrt import checksums

    path = make_file(tmp_path / "f", 7 * MiB)
    data = path.read_bytes()
    crc = base64.b64encode(checksums.crc64nvme(data).to_bytes(8, "big")).decode()
    head = {"ContentLength": len(data), "ETag": '"abc-2"', "ChecksumCRC64NVME": crc, "ChecksumType": "FULL_OBJECT"}
    with FileSource(path) as source:
        # The ETag is not the multipart MD5 form: the CRC is all there is, and the detail says it is a CRC.
        comparison = compare_object(_Head(head), BUCKET, "k", source)
        assert comparison.detail == f"size and CRC64NVME full-object checksum{CRC_ONLY}"
        assert not comparison.collision_resistant


def test_sse_kms_without_checksum_cannot_be_compared_and_so_does_not_match(tmp_path):
    path = make_file(tmp_path / "f", 10)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    head = {"ContentLength": 10, "ETag": f'"{md5}"', "ServerSideEncryption": "aws:kms"}
    with FileSource(path) as source:
        comparison = compare_object(_Head(head), BUCKET, "k", source)
    assert comparison.exists and not comparison.matches and "cannot be compared" in comparison.detail


def test_parts_of_growing_sizes_cannot_be_reproduced_and_so_do_not_match(tmp_path):
    path = make_file(tmp_path / "f", 12 * MiB)
    parts = [path.read_bytes()[: 5 * MiB], path.read_bytes()[5 * MiB :]]  # 5 MiB + 7 MiB: not one size
    etag = multipart_etag(hashlib.md5(p).digest() for p in parts)
    head = {"ContentLength": 12 * MiB, "ETag": etag}
    with FileSource(path) as source:
        comparison = compare_object(_Head(head, {"ContentLength": 5 * MiB}), BUCKET, "k", source)
    assert not comparison.matches and "not of one size" in comparison.detail


MULTIPART_ETAG = '"' + "a" * 32 + '-3"'


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        # A CRC, labelled or not, can be forged by adjusting 4 bytes: the MD5 ETag is preferred to it.
        ({"ETag": MULTIPART_ETAG, "ChecksumCRC32C": "AAAAAA==-3"}, ("etag", None, 3)),
        ({"ETag": MULTIPART_ETAG, "ChecksumCRC32C": "AAAAAA==", "ChecksumType": "COMPOSITE"}, ("etag", None, 3)),
        ({"ETag": MULTIPART_ETAG, "ChecksumCRC32C": "AAAAAA=="}, ("etag", None, 3)),
        ({"ETag": '"' + "a" * 32 + '"', "ChecksumCRC32C": "x", "ChecksumType": "FULL_OBJECT"}, ("md5", None, 1)),
        # ... and a SHA checksum to the MD5 ETag.
        ({"ETag": MULTIPART_ETAG, "ChecksumSHA256": "x-3", "ChecksumCRC32C": "y-3"}, ("composite", "SHA256", 3)),
        # No MD5 ETag (a store whose ETags are something else): the CRC is all there is.
        ({"ETag": '"abc-3"', "ChecksumCRC32C": "AAAAAA==-3"}, ("composite", "CRC32C", 3)),
        ({"ETag": '"' + "a" * 32 + '"', "ChecksumSHA256": "x"}, ("full", "SHA256", 1)),
        ({"ETag": '"' + "a" * 32 + '"'}, ("md5", None, 1)),
        ({"ETag": MULTIPART_ETAG, "SSECustomerAlgorithm": "AES256"}, None),
        # No MD5 ETag to prefer (SSE-C), an unlabelled CRC: both its readings are tried.
        ({"ETag": MULTIPART_ETAG, "SSECustomerAlgorithm": "AES256", "ChecksumCRC32C": "x"}, ("either", "CRC32C", 3)),
        ({"ETag": MULTIPART_ETAG, "SSECustomerAlgorithm": "AES256", "ChecksumSHA256": "x"}, ("composite", "SHA256", 3)),
    ],
)
def test_the_fingerprint_chosen_from_a_head_answer(head, expected):
    found = _fingerprint(head)
    assert (found and (found.kind, found.algorithm, found.parts)) == expected


def _crc32c_b64(data: bytes) -> str:
    return checksum_b64("CRC32C", data)


@pytest.mark.parametrize("labelled", [True, False], ids=["ChecksumType", "no-type"])
def test_a_whole_file_crc_is_recognised_labelled_or_not_under_kms(tmp_path, labelled):
    """Under SSE-KMS the ETag proves nothing; a store may report the whole-file CRC without ChecksumType."""
    path = make_file(tmp_path / "f", 12 * MiB)
    data = path.read_bytes()
    head = {
        "ContentLength": len(data),
        "ETag": '"' + "f" * 32 + '-3"',
        "ServerSideEncryption": "aws:kms",
        "ChecksumCRC32C": _crc32c_b64(data),
        **({"ChecksumType": "FULL_OBJECT"} if labelled else {}),
    }
    with FileSource(path) as source:
        comparison = compare_object(_Head(head, {"ContentLength": 5 * MiB}), BUCKET, "k", source)
        assert comparison.matches and comparison.detail == f"size and CRC32C full-object checksum{CRC_ONLY}"
        other = make_file(tmp_path / "g", 12 * MiB, seed=9)
        with FileSource(other) as different:
            assert not compare_object(_Head(head, {"ContentLength": 5 * MiB}), BUCKET, "k", different).matches


def test_an_unlabelled_composite_crc_is_still_recognised_and_parts_of_no_one_size_fall_back_to_the_whole(tmp_path):
    path = make_file(tmp_path / "f", 12 * MiB)
    data = path.read_bytes()
    composite = composite_checksum("CRC32C", [_crc32c_b64(p) for p in _parts(data, 5 * MiB)]).split("-")[0]
    kms = {"ContentLength": len(data), "ETag": '"' + "f" * 32 + '-3"', "ServerSideEncryption": "aws:kms"}
    with FileSource(path) as source:
        found = compare_object(
            _Head({**kms, "ChecksumCRC32C": composite}, {"ContentLength": 5 * MiB}), BUCKET, "k", source
        )
        assert found.detail == f"size and CRC32C composite checksum of 3 parts{CRC_ONLY}"
        # Parts of growing sizes (a stream): no part size reproduces 3 parts, but the whole-file CRC needs none.
        whole = {**kms, "ETag": '"' + "f" * 32 + '-2"', "ChecksumCRC32C": _crc32c_b64(data)}
        assert compare_object(_Head(whole, {"ContentLength": 5 * MiB}), BUCKET, "k", source).matches
