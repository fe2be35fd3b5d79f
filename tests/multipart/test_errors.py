from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from airflow_mpu_provider.multipart.errors import error_code, s3_error


def client_error(code: str, message: str = "msg") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "UploadPart")


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        ("EntityTooSmall", "part_size >= 5 MiB"),
        ("InvalidPart", "Retry the task"),
        ("InvalidPartOrder", "bug"),
        ("NoSuchUpload", "aborted"),
        ("NoSuchBucket", "bucket does not exist"),
        ("AccessDenied", "s3:AbortMultipartUpload"),
    ],
)
def test_messages_name_the_upload_and_the_fix(code, hint):
    error = s3_error(client_error(code), operation="UploadPart", bucket="b", key="k/x", upload_id="UP1")
    text = str(error)
    assert "UploadPart failed for s3://b/k/x (UploadId UP1)" in text
    assert code in text
    assert hint in text
    assert error.code == code
    assert error_code(error) == code


def test_unknown_code_still_names_everything():
    error = s3_error(client_error("Weird", "odd"), operation="ListParts", bucket="b", key="k", upload_id=None)
    assert str(error) == "ListParts failed for s3://b/k: Weird: odd"
