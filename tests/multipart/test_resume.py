"""find_adoptable_upload: a found upload is adopted only when verifiably quiet and fitting; else left alone."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from botocore.exceptions import ClientError

from airflow_mpu_provider.multipart.errors import S3UploadError
from airflow_mpu_provider.multipart.integrity import digest_part
from airflow_mpu_provider.multipart.plan import plan_parts
from airflow_mpu_provider.multipart.resume import LISTING_UNAVAILABLE_CODES, find_adoptable_upload
from airflow_mpu_provider.multipart.units import MiB
from airflow_mpu_provider.multipart.upload import MultipartUpload

BUCKET = "test-bucket"
LATER = timedelta(minutes=20)


def leftover(client, key: str, parts: int = 1) -> str:
    upload = MultipartUpload(client, BUCKET, key)
    upload.create()
    for number in range(1, parts + 1):
        data = bytes([number]) * (5 * MiB)
        upload.put_part(number, data, digest_part(number, data, algorithm="CRC32C", with_md5=True))
    return upload.upload_id


def find(client, key: str, size: int, *, after: timedelta = timedelta(0), **kwargs):
    return find_adoptable_upload(
        client, BUCKET, key, plan_parts(size, 5 * MiB), "CRC32C", now=lambda: datetime.now(UTC) + after, **kwargs
    )


def test_a_young_upload_is_left_alone_and_an_old_quiet_one_adopted(mock_s3, caplog):
    upload_id = leftover(mock_s3, "k", parts=2)
    with caplog.at_level(logging.WARNING):
        assert find(mock_s3, "k", 12 * MiB) is None  # just initiated: it may be another run's, live
    assert "may be live" in caplog.text and "S3AbortStaleUploadsOperator" in caplog.text
    found = find(mock_s3, "k", 12 * MiB, after=LATER)
    assert found is not None and found.upload_id == upload_id and len(found.parts) == 2
    assert find(mock_s3, "k", 12 * MiB, after=LATER, quiet_after=timedelta(hours=1)) is None
    MultipartUpload(mock_s3, BUCKET, "k", upload_id=upload_id).abort()


def test_an_upload_that_does_not_fit_the_plan_is_left_alone(mock_s3, caplog):
    upload_id = leftover(mock_s3, "k", parts=2)
    with caplog.at_level(logging.WARNING):
        assert find(mock_s3, "k", 7 * MiB, after=LATER) is None  # a 7 MiB file has no part 2 of 5 MiB
    assert "does not fit this file" in caplog.text
    assert [u["UploadId"] for u in mock_s3.list_multipart_uploads(Bucket=BUCKET)["Uploads"]] == [upload_id]
    MultipartUpload(mock_s3, BUCKET, "k", upload_id=upload_id).abort()


def test_only_the_exact_key_counts(mock_s3):
    upload_id = leftover(mock_s3, "k/longer")
    assert find(mock_s3, "k", 6 * MiB, after=LATER) is None
    MultipartUpload(mock_s3, BUCKET, "k/longer", upload_id=upload_id).abort()


class _Store:
    """An upload initiated long ago whose last part was written a minute ago: a slow, live upload."""

    def __init__(self, error: str | None = None) -> None:
        self.error = error
        self.now = datetime.now(UTC)
        self.meta = SimpleNamespace(
            events=SimpleNamespace(register=lambda *a, **k: None, register_first=lambda *a, **k: None)
        )

    def list_multipart_uploads(self, **kwargs):
        if self.error:
            raise ClientError({"Error": {"Code": self.error, "Message": "no"}}, "ListMultipartUploads")
        return {"Uploads": [{"Key": "k", "UploadId": "u1", "Initiated": self.now - timedelta(hours=3)}]}

    def list_parts(self, **kwargs):
        part = {"PartNumber": 1, "Size": 5 * MiB, "ETag": '"x"', "LastModified": self.now - timedelta(minutes=1)}
        return {"Parts": [part]}


def test_a_recent_part_makes_an_old_upload_live(caplog):
    with caplog.at_level(logging.WARNING):
        assert find(_Store(), "k", 6 * MiB) is None
    assert "a part was written" in caplog.text


@pytest.mark.parametrize("code", ["AccessDenied", "NotImplemented", "MethodNotAllowed", "501"])
def test_listing_unavailable_is_raised_for_the_caller_to_degrade(code):
    with pytest.raises(S3UploadError) as info:
        find(_Store(error=code), "k", 6 * MiB)
    assert info.value.code in LISTING_UNAVAILABLE_CODES
