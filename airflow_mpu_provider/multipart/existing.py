"""What the key holds before an upload starts: the ``replace=False`` checks, made before anything is created.

A file is compared with the object (``existing_object``: an object holding exactly the file is
success with nothing sent; any other object is refused); a stream has nothing to compare, so any
object is refused (``check_key_free``). A HeadObject answered 403 is explained by a one-byte probe
(``explain_forbidden_head``): S3 answers 403 for a missing key to a role without s3:ListBucket.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from airflow_mpu_provider.multipart.checksums.compare import NOT_FOUND_CODES, ObjectComparison, compare_object
from airflow_mpu_provider.multipart.errors import S3UploadError, s3_error
from airflow_mpu_provider.multipart.request_args import request_args
from airflow_mpu_provider.multipart.sources.file import FileSource
from airflow_mpu_provider.multipart.upload import head_object

#: HeadObject codes that mean "forbidden": for a missing key, the answer to a role without s3:ListBucket.
FORBIDDEN_CODES = frozenset({"403", "AccessDenied", "Forbidden"})


def compare_with_object(
    client: Any,
    bucket: str,
    key: str,
    source: FileSource,
    extra_args: Mapping[str, Any],
    *,
    part_size_hint: int | None = None,
    cancel: threading.Event | None = None,
) -> ObjectComparison | None:
    """The object at the key against ``source``; None when HeadObject was forbidden and a probe shows the
    key is free (a role without s3:ListBucket)."""
    try:
        return compare_object(
            client, bucket, key, source, extra_args=extra_args, part_size_hint=part_size_hint, cancel=cancel
        )
    except S3UploadError as e:
        _raise_unless_free(client, bucket, key, e, extra_args)
        return None


def existing_object(
    client: Any,
    bucket: str,
    key: str,
    source: FileSource,
    extra_args: Mapping[str, Any],
    *,
    part_size_hint: int | None,
    cancel: threading.Event | None,
    log: logging.Logger,
) -> ObjectComparison | None:
    """For ``replace=False``: None if the key is free; the comparison if the object already holds exactly
    the file (nothing needs uploading); otherwise S3UploadError(ObjectExists)."""
    comparison = compare_with_object(
        client, bucket, key, source, extra_args, part_size_hint=part_size_hint, cancel=cancel
    )
    if comparison is None or not comparison.exists:
        return None
    if comparison.matches:
        (log.info if comparison.collision_resistant else log.warning)(
            "s3://%s/%s already holds exactly %s (%s compared): nothing to upload (replace=False).",
            bucket,
            key,
            source.description,
            comparison.detail,
        )
        return comparison
    raise object_exists_error(bucket, key, f" It is not this file: {comparison.detail}.")


def check_key_free(client: Any, bucket: str, key: str, extra_args: Mapping[str, Any]) -> None:
    """For a stream (nothing to compare with): raise S3UploadError(ObjectExists) if the key holds an object."""
    try:
        head_object(client, bucket, key, extra_args=extra_args)
    except S3UploadError as e:
        if e.code in NOT_FOUND_CODES:
            return
        _raise_unless_free(client, bucket, key, e, extra_args)
        return
    raise object_exists_error(bucket, key)


def _raise_unless_free(client: Any, bucket: str, key: str, error: S3UploadError, extra_args: Mapping[str, Any]) -> None:
    """Re-raise ``error`` unless it is a 403 that a probe shows means "no object here"."""
    if error.code not in FORBIDDEN_CODES:
        raise error
    explained = explain_forbidden_head(client, bucket, key, error, extra_args)
    if explained is not None:
        raise explained from error


def explain_forbidden_head(
    client: Any, bucket: str, key: str, error: S3UploadError, extra_args: Mapping[str, Any]
) -> S3UploadError | None:
    """Why the existence check's HeadObject was answered 403, as an error to raise (None: the key is free).

    A HEAD answer has no body, so a 403 does not say whether the credentials are wrong or a permission
    is missing. A one-byte GetObject of the key does: AccessDenied there is, on AWS, what a missing key
    looks like to a role without s3:ListBucket.
    """
    try:
        client.get_object(Bucket=bucket, Key=key, Range="bytes=0-0", **request_args(client, "GetObject", extra_args))
    except ClientError as e:
        probe = s3_error(e, operation="GetObject", bucket=bucket, key=key, upload_id=None)
        if probe.code in NOT_FOUND_CODES:
            return None
        if probe.code not in FORBIDDEN_CODES:
            return probe  # e.g. SignatureDoesNotMatch, InvalidAccessKeyId: with their own hints
    else:
        return error
    return S3UploadError(
        f"HeadObject on s3://{bucket}/{key} was refused ({error.code}), so replace=False cannot check whether "
        "the key already holds an object. S3 answers 403 rather than 404 for a missing key when the role "
        f"lacks s3:ListBucket: grant s3:ListBucket on arn:aws:s3:::{bucket} (and s3:GetObject on its objects), "
        "or set replace=True to upload without the check.",
        code="AccessDenied",
        operation="HeadObject",
        bucket=bucket,
        key=key,
        upload_id=None,
    )


def object_exists_error(bucket: str, key: str, why: str = "") -> S3UploadError:
    return S3UploadError(
        f"s3://{bucket}/{key} already exists; set replace=True to overwrite it, or use another key.{why}",
        code="ObjectExists",
        operation="HeadObject",
        bucket=bucket,
        key=key,
        upload_id=None,
    )
