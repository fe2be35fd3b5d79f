"""MultipartUploadOperator's arguments: which ones Airflow renders, and what is refused when the DAG is parsed.

Templated arguments are checked once Airflow has rendered them, at execute, before any S3 call; the
schedule's arguments (``upload_window``, ``window_timezone``, ``finish_by``) are checked by ``upload_schedule``.
"""

from __future__ import annotations

from typing import Any

from airflow_mpu_provider.multipart import (
    OBJECT_ARGUMENT_NAMES,
    check_object_arguments,
    normalize_checksum_algorithm,
    resolve_checksum_type,
    validation,
)
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


def check_rendered_arguments(task: Any, *, rendered: bool = True) -> None:
    """Refuse templated arguments of the wrong type: at construction (but for templates, which Airflow has
    not rendered yet) and at execute, once rendered, before any S3 call. ``command_timeout`` becomes
    seconds (a rendered "3600" included)."""
    if task.command_timeout is not None and (rendered or not is_template(task.command_timeout)):
        task.command_timeout = validation.seconds(
            "command_timeout", task.command_timeout, positive=True, numeric_strings=True
        )
    for name in ("aws_conn_id", "sse_kms_key_id", "storage_class", "acl_policy"):
        validation.optional_text(name, getattr(task, name))


def upload_arguments(task: Any) -> dict[str, Any]:
    """What a try's ``UploadOptions`` are built from (``UploadOptions.from_arguments``, in the hook): the
    tuning, checksum and object arguments; for a file, this run's window and deadline too."""
    arguments = {
        "concurrency": task.concurrency,
        "max_concurrency": task.max_concurrency,
        "max_buffer_bytes": task.max_buffer_bytes,
        "max_bandwidth": task.max_bandwidth,
        "checksum_algorithm": task.checksum_algorithm,
        "checksum_type": task.checksum_type,
        "progress_interval": task.progress_interval,
        **{name: getattr(task, name) for name in OBJECT_ARGUMENT_NAMES},
    }
    if task.command is None:
        arguments.update(upload_window=task._window, finish_by=task._finish_by)
    return arguments
