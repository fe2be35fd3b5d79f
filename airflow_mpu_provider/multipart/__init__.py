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

from airflow_mpu_provider.multipart.errors import (
    IntegrityError,
    InvalidUploadRequest,
    MultipartUploadError,
    S3UploadError,
    SourceChangedError,
    UploadCancelledError,
)
from airflow_mpu_provider.multipart.file_engine import FileUploadEngine
from airflow_mpu_provider.multipart.options import UploadOptions
from airflow_mpu_provider.multipart.parts.plan import plan_parts
from airflow_mpu_provider.multipart.parts.record import PartRecord
from airflow_mpu_provider.multipart.result import UploadResult
from airflow_mpu_provider.multipart.schedule import UploadPaused
from airflow_mpu_provider.multipart.sources.file import FileSource
from airflow_mpu_provider.multipart.upload import MultipartUpload

__all__ = [
    "IntegrityError",
    "InvalidUploadRequest",
    "MultipartUpload",
    "MultipartUploadError",
    "PartRecord",
    "S3UploadError",
    "SourceChangedError",
    "UploadCancelledError",
    "UploadOptions",
    "UploadPaused",
    "UploadResult",
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
    as the UploadId exists: the place to record it somewhere durable.
    """
    with FileSource(path) as source:
        engine = FileUploadEngine(
            client,
            bucket=bucket,
            key=key,
            source=source,
            plan=plan_parts(source.size, part_size),
            options=options or UploadOptions(),
            log=log,
            on_upload_started=on_upload_started,
        )
        return engine.run(resume_upload_id=resume_upload_id, keep_on_failure=keep_on_failure)
