"""The per-request arguments every call carries, and ETags known not to be MD5s."""

from __future__ import annotations

import logging

import boto3
import pytest

from airflow_mpu_provider.multipart.checksums.digests import (
    digest_part,
    etag_is_md5,
    etag_is_md5_for_args,
    part_matches,
)
from airflow_mpu_provider.multipart.listing import list_incomplete_uploads
from airflow_mpu_provider.multipart.request_args import PER_REQUEST_ARGS, request_args
from airflow_mpu_provider.multipart.units import MiB
from airflow_mpu_provider.multipart.upload import MultipartUpload, head_object
from tests.conftest import send_part
from tests.support.recorded_calls import missing_args, record_calls

BUCKET = "test-bucket"
PAYER_AND_OWNER = {"RequestPayer": "requester", "ExpectedBucketOwner": "123456789012"}
SSE_C = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": "0123456789abcdef0123456789abcdef"}


@pytest.fixture(scope="module")
def client():
    return boto3.client("s3", region_name="us-east-1")


def test_which_operation_takes_which_argument_comes_from_botocores_model(client):
    everything = {**PAYER_AND_OWNER, **SSE_C, "ContentType": "text/plain", "StorageClass": "GLACIER"}
    for operation in ("CreateMultipartUpload", "UploadPart", "ListParts", "CompleteMultipartUpload", "HeadObject"):
        assert request_args(client, operation, everything) == {**PAYER_AND_OWNER, **SSE_C}, operation
    for operation in ("AbortMultipartUpload", "ListMultipartUploads"):  # no SSE-C in their input shapes
        assert request_args(client, operation, everything) == PAYER_AND_OWNER, operation
    assert request_args(client, "UploadPart", None) == {}
    assert set(PER_REQUEST_ARGS) == {*PAYER_AND_OWNER, "SSECustomerAlgorithm", "SSECustomerKey", "SSECustomerKeyMD5"}


@pytest.mark.parametrize("sse_c", [False, True])
def test_every_call_of_an_upload_carries_them(mock_s3, sse_c):
    args = {**PAYER_AND_OWNER, **(SSE_C if sse_c else {})}
    calls = record_calls(mock_s3)
    upload = MultipartUpload(mock_s3, BUCKET, "k", extra_args={**args, "ContentType": "text/plain"})
    upload.create()
    upload.complete([send_part(upload, 1, b"a" * (5 * MiB)), send_part(upload, 2, b"b")])
    head_object(mock_s3, BUCKET, "k", extra_args=args)
    doomed = MultipartUpload(mock_s3, BUCKET, "k2", extra_args=args)
    doomed.create()
    doomed.abort()  # AbortMultipartUpload, then ListParts to confirm it is gone
    list(list_incomplete_uploads(mock_s3, BUCKET, "k", extra_args=args))
    names = [name for name, _ in calls]
    assert set(names) == {
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "HeadObject",
        "AbortMultipartUpload",
        "ListParts",
        "ListMultipartUploads",
    }
    assert missing_args(calls, PAYER_AND_OWNER) == []
    with_sse_c = [(n, p) for n, p in calls if n not in ("AbortMultipartUpload", "ListMultipartUploads")]
    assert missing_args(with_sse_c, SSE_C if sse_c else {}) == []
    assert all("ContentType" not in p for n, p in calls if n != "CreateMultipartUpload")


# -- ETags that are not MD5s ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ({"ServerSideEncryption": "aws:kms"}, False),
        ({"ServerSideEncryption": "aws:kms:dsse"}, False),
        ({"SSECustomerAlgorithm": "AES256"}, False),
        ({"ServerSideEncryption": "AES256"}, True),
        ({}, True),
    ],
)
def test_etag_is_md5_reads_the_answer(response, expected):
    assert etag_is_md5(response) is expected


def test_etag_is_md5_for_args():
    assert etag_is_md5_for_args({"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "k"}) is False
    assert etag_is_md5_for_args({"SSECustomerKey": "x"}) is False
    assert etag_is_md5_for_args({"ServerSideEncryption": "AES256"}) is True


def test_an_etag_known_not_to_be_an_md5_is_never_compared():
    digest = digest_part(1, b"data", algorithm=None, with_md5=True)
    opaque = {"ETag": '"' + "0" * 32 + '"'}
    assert part_matches(digest, opaque, None) is False  # looks like an MD5: compared, differs
    assert part_matches(digest, opaque, None, etag_is_md5=False) is None  # known opaque: undecidable
    assert part_matches(digest, {**opaque, "Size": 5}, None, etag_is_md5=False) is False  # size still counts


def kms_answers(client) -> None:
    """moto's UploadPart answers as S3 with bucket-default SSE-KMS gives them: opaque ETag, aws:kms."""

    def rewrite(parsed, **_):
        parsed["ETag"] = '"' + "f" * 32 + '"'
        parsed["ServerSideEncryption"] = "aws:kms"
        for name in [k for k in parsed if k.startswith("Checksum")]:
            del parsed[name]

    client.meta.events.register("after-call.s3.UploadPart", rewrite, unique_id="tests-kms-answers")


def test_a_part_the_store_says_is_kms_encrypted_is_not_taken_for_corruption(mock_s3, caplog):
    kms_answers(mock_s3)
    upload = MultipartUpload(mock_s3, BUCKET, "kms", checksum_algorithm=None)
    upload.create()
    try:
        with caplog.at_level(logging.WARNING):
            send_part(upload, 1, b"a" * (5 * MiB))  # an opaque ETag: before, an IntegrityError
            send_part(upload, 2, b"b")
    finally:
        upload.abort()  # moto itself would refuse the opaque ETags in CompleteMultipartUpload
    assert upload.etags_are_md5 is False
    warnings = [r.getMessage() for r in caplog.records if "nothing to verify parts with" in r.getMessage()]
    assert len(warnings) == 1  # said once per upload, not once per part
    assert "SSE-KMS or SSE-C" in warnings[0]


def test_a_kms_part_whose_echoed_checksum_differs_is_still_caught(mock_s3):
    """Not an MD5 ETag does not mean "trust anything": the checksum the store echoes is still compared."""
    from airflow_mpu_provider.multipart.errors import IntegrityError

    def wrong_checksum(parsed, **_):
        parsed["ETag"] = '"' + "f" * 32 + '"'
        parsed["ServerSideEncryption"] = "aws:kms"
        parsed["ChecksumCRC32C"] = "AAAAAA=="

    mock_s3.meta.events.register("after-call.s3.UploadPart", wrong_checksum, unique_id="tests-kms-wrong-checksum")
    upload = MultipartUpload(mock_s3, BUCKET, "kms-bad", checksum_algorithm="CRC32C")
    upload.create()
    try:
        with pytest.raises(IntegrityError, match="does not match the bytes sent"):
            send_part(upload, 1, b"a" * (5 * MiB))
    finally:
        upload.abort()
