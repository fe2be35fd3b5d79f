from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from airflow_mpu_provider.multipart.base_engine import upload_stays_usable
from airflow_mpu_provider.multipart.errors import (
    ABORTED,
    ERROR_HINTS,
    KEPT_FOR_RETRY,
    NOT_RESUMABLE_CODES,
    S3UploadError,
    error_code,
    s3_error,
)


def client_error(code: str, message: str = "msg") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "UploadPart")


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        ("EntityTooSmall", "part_size >= 5 MiB"),
        ("InvalidPart", "The upload is aborted; a retry of the task starts a new one"),
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


@pytest.mark.parametrize("code", [*sorted(NOT_RESUMABLE_CODES), "SlowDown", "InternalError"])
def test_the_engine_aborts_after_exactly_the_codes_whose_hints_say_so(code):
    error = S3UploadError("failed", code=code, operation="UploadPart", bucket="b", key="k", upload_id="u")
    assert upload_stays_usable(error) is (code not in NOT_RESUMABLE_CODES)


@pytest.mark.parametrize("code", sorted(ERROR_HINTS))
def test_every_hint_says_what_happens_next(code):
    """Not-resumable codes: aborted (or already gone); the rest: kept for a retry or aborted, or, where the
    credentials cannot abort, left for the janitor. A hint promising a resume after an abort is a lie."""
    hint = ERROR_HINTS[code]
    if code in NOT_RESUMABLE_CODES:
        assert ABORTED in hint or "nothing left to abort" in hint
        assert "resumes" not in hint
    else:
        assert KEPT_FOR_RETRY in hint or "stays until S3AbortStaleUploadsOperator" in hint


def status_error(code: str, status: int, message: str = "msg") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "CompleteMultipartUpload",
    )


def test_a_412_is_a_precondition_failure_whatever_its_code():
    """OpenStack Swift answers a failed If-None-Match with 412 InvalidRequest; AWS with 412 PreconditionFailed."""
    from airflow_mpu_provider.multipart.errors import is_precondition_failure

    for code in ("InvalidRequest", "PreconditionFailed"):
        error = s3_error(
            status_error(code, 412), operation="CompleteMultipartUpload", bucket="b", key="k", upload_id="U"
        )
        assert is_precondition_failure(error) and error.status == 412
        assert "condition of the request did not hold" in str(error) and "checksum_algorithm" not in str(error)
    other = s3_error(status_error("InvalidRequest", 400), operation="UploadPart", bucket="b", key="k", upload_id="U")
    assert not is_precondition_failure(other)


@pytest.mark.parametrize("code", ["InvalidRequest", "InvalidDigest", "NotImplemented"])
def test_no_hint_advises_checksum_algorithm_none_when_it_already_was(code):
    given = s3_error(
        client_error(code), operation="UploadPart", bucket="b", key="k", upload_id="U", checksum_algorithm=None
    )
    assert "checksum_algorithm=None" not in str(given) and KEPT_FOR_RETRY in str(given)
    crc = s3_error(
        client_error(code), operation="UploadPart", bucket="b", key="k", upload_id="U", checksum_algorithm="CRC32C"
    )
    assert "checksum_algorithm=None" in str(crc)
