"""MultipartUploadOperator's argument checks: what can be refused when the DAG is parsed, before any S3 call.

Templated arguments are checked once Airflow has rendered them, at execute; the schedule's arguments
(``upload_window``, ``window_timezone``, ``finish_by``) are checked by ``upload_schedule``.
"""

from __future__ import annotations

from typing import Any


def is_template(value: Any) -> bool:
    """A string Airflow will render (validated once rendered, at execute)."""
    return isinstance(value, str) and "{" in value
