"""MultipartUploadOperator's arguments: which ones Airflow renders, and what is refused when the DAG is parsed.

Templated arguments are checked once Airflow has rendered them, at execute, before any S3 call; the
schedule's arguments (``upload_window``, ``window_timezone``, ``finish_by``) are checked by ``upload_schedule``.
"""

from __future__ import annotations

from typing import Any

from airflow_mpu_provider.multipart import check_object_arguments, normalize_checksum_algorithm, resolve_checksum_type
from airflow_mpu_provider.multipart.errors import InvalidUploadRequest

#: The operator's ``template_fields``: the arguments Airflow renders before execute.
TEMPLATE_FIELDS = (
    "file",
    "command",
    "command_timeout",
    "key",
    "bucket",
    "aws_conn_id",
    "sse_kms_key_id",
    "storage_class",
    "acl_policy",
    "content_type",
    "metadata",
    "tags",
    "upload_window",
    "window_timezone",
    "finish_by",
)


def is_template(value: Any) -> bool:
    """A string Airflow will render (validated once rendered, at execute)."""
    return isinstance(value, str) and "{" in value


def check_arguments(task: Any) -> None:
    """Refuse, when the DAG is parsed, arguments that cannot work together: not exactly one of ``file`` and
    ``command``, a ``checksum_type`` the algorithm cannot give, object arguments that contradict each other."""
    if (task.file is None) == (task.command is None):
        raise ValueError(
            "give exactly one of file=... (a local file) or command=... (a command whose output to upload)"
        )
    check_checksum_type(task.checksum_algorithm, task.checksum_type)
    check_object_arguments(encrypt=task.encrypt, sse_kms_key_id=task.sse_kms_key_id, extra_args=task.extra_args)


def check_checksum_type(algorithm: str | None, checksum_type: Any) -> None:
    """Refuse a checksum_type that cannot work with checksum_algorithm; an unknown algorithm is left for
    execute to report, as before checksum types existed."""
    try:
        normalized = normalize_checksum_algorithm(algorithm)
    except InvalidUploadRequest:
        return
    resolve_checksum_type(checksum_type, normalized)
