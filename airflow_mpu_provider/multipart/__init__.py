"""The upload engine: a file (or a stream) to one S3 object in parallel parts, resumable, verified.

Nothing here imports Airflow: it takes a boto3 S3 client, so it works in scripts and other
schedulers too. The front door is ``upload_file``:

    import boto3
    from airflow_mpu_provider.multipart import upload_file

    result = upload_file(boto3.client("s3"), "/data/dump.sql", "backups", "postgres/dump.sql")
    result = upload_file(client, path, bucket, key, resume_upload_id=earlier.upload_id)  # continue one

Inside Airflow, ``S3MultipartHook`` builds a client tuned for parallel parts from a connection, and
``MultipartUploadOperator`` adds retries that resume, XCom, ``on_kill`` and lineage.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from airflow_mpu_provider.multipart.cancellation import CancelScope
from airflow_mpu_provider.multipart.checksums.digests import DEFAULT_CHECKSUM_ALGORITHM, normalize_checksum_algorithm
from airflow_mpu_provider.multipart.checksums.whole_file import resolve_checksum_type
from airflow_mpu_provider.multipart.errors import (
    IntegrityError,
    InvalidUploadRequest,
    MultipartUploadError,
    S3UploadError,
    SourceChangedError,
    UploadCancelledError,
    UploadNotRecordedError,
)
from airflow_mpu_provider.multipart.file_upload import FileUploadSequence, RetryPlan
from airflow_mpu_provider.multipart.ledger import UploadLedger
from airflow_mpu_provider.multipart.options import (
    DEFAULT_MAX_BUFFER_BYTES,
    OBJECT_ARGUMENT_NAMES,
    UploadOptions,
    check_object_arguments,
    object_arguments,
)
from airflow_mpu_provider.multipart.parallelism import DEFAULT_MAX_CONCURRENCY
from airflow_mpu_provider.multipart.parts.plan import MAX_PART_SIZE, MIN_PART_SIZE
from airflow_mpu_provider.multipart.parts.record import PartRecord
from airflow_mpu_provider.multipart.progress import DEFAULT_PROGRESS_INTERVAL
from airflow_mpu_provider.multipart.result import UploadResult
from airflow_mpu_provider.multipart.resume import DEFAULT_ADOPT_QUIET_AFTER
from airflow_mpu_provider.multipart.s3_target import bucket_and_path, object_target
from airflow_mpu_provider.multipart.schedule import UploadPaused
from airflow_mpu_provider.multipart.sources.command import command_label, find_bash, program_name
from airflow_mpu_provider.multipart.stale import DEFAULT_OLDER_THAN, StaleUploadCleanupError
from airflow_mpu_provider.multipart.upload import MultipartUpload
from airflow_mpu_provider.multipart.windows import (
    BandwidthTimetable,
    UploadWindow,
    bandwidth_setting,
    deadline_at,
    finish_by_setting,
    resolve_timezone,
)

__all__ = [
    "DEFAULT_ADOPT_QUIET_AFTER",
    "DEFAULT_CHECKSUM_ALGORITHM",
    "DEFAULT_MAX_BUFFER_BYTES",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_OLDER_THAN",
    "DEFAULT_PROGRESS_INTERVAL",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "OBJECT_ARGUMENT_NAMES",
    "BandwidthTimetable",
    "CancelScope",
    "FileUploadSequence",
    "IntegrityError",
    "InvalidUploadRequest",
    "MultipartUpload",
    "MultipartUploadError",
    "PartRecord",
    "RetryPlan",
    "S3UploadError",
    "SourceChangedError",
    "StaleUploadCleanupError",
    "UploadCancelledError",
    "UploadLedger",
    "UploadNotRecordedError",
    "UploadOptions",
    "UploadPaused",
    "UploadResult",
    "UploadWindow",
    "bandwidth_setting",
    "bucket_and_path",
    "check_object_arguments",
    "command_label",
    "deadline_at",
    "find_bash",
    "finish_by_setting",
    "normalize_checksum_algorithm",
    "object_arguments",
    "object_target",
    "program_name",
    "resolve_checksum_type",
    "resolve_timezone",
    "upload_file",
]


def upload_file(
    client: Any,
    path: str | os.PathLike[str],
    bucket: str,
    key: str,
    *,
    part_size: int | None = None,
    options: UploadOptions | None = None,
    resume_upload_id: str | None = None,
    keep_on_failure: bool = False,
    on_upload_started: Callable[[str], None] | None = None,
    log: logging.Logger | None = None,
) -> UploadResult:
    """Upload the file at ``path`` to ``bucket``/``key`` and prove the object holds its bytes.

    ``part_size`` None picks 16 MiB, or what fits the file into 10,000 parts. ``resume_upload_id``
    continues an earlier upload of the same file: its stored parts are verified against the local
    bytes and only the others are sent. On failure the upload is aborted, unless ``keep_on_failure``
    and the error leaves it usable for a later resume. ``on_upload_started(upload_id)`` runs as soon
    as the UploadId exists: the place to record it somewhere durable. ``options.overwrite`` False
    compares the object at the key with the file first (``FileUploadSequence``, which this runs).
    """
    return FileUploadSequence(
        client,
        path,
        bucket,
        key,
        options=options or UploadOptions(),
        part_size=part_size,
        adopt_quiet_after=None,  # only the upload the caller names is continued
        resume_upload_id=resume_upload_id,
        retry=RetryPlan(resumes_by_id=True) if keep_on_failure else None,
        on_upload_started=on_upload_started,
        log=log,
    ).run()
