"""The operator's retry bookkeeping: Airflow's ``task_state_store`` as the engine's ``UploadLedger``.

A try records its upload there the moment it exists; the next try of the same task instance reads the
record and takes the upload over (a file's is resumed, a command's dead stream upload is aborted);
the engine's sequences decide what to keep and when to forget (``multipart/file_upload.py``,
``multipart/stream_upload.py``). Airflow < 3.3 has no ``task_state_store``: no ledger, and a retry
finds a file's upload only with ListMultipartUploads.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow_mpu_provider.multipart import RetryPlan, validation
from airflow_mpu_provider.version_compat import AIRFLOW_V_3_3_PLUS

#: task_state_store key of the resume record. Renaming it breaks the resume of in-flight retries.
STATE_KEY = "multipart_upload"
#: task_state_store key of a command's stream upload: {bucket, key, upload_id}. A stream is never
#: resumed; the record lets the next try abort the upload of a try that died (SIGKILL, OOM).
STREAM_STATE_KEY = "multipart_stream_upload"


class RetryLedger:
    """One record of ``task_state_store`` (``state_key``): get, set, delete (the engine's ``UploadLedger``)."""

    def __init__(self, store: Any, state_key: str, log: logging.Logger | Any) -> None:
        self.store = store
        self.state_key = state_key
        self.log = log

    def __str__(self) -> str:
        return "task_state_store"

    def get(self) -> dict[str, Any] | None:
        value = self.store.get(self.state_key)
        return value if isinstance(value, dict) else None

    def set(self, record: dict[str, Any]) -> None:
        self.store.set(self.state_key, record)

    def delete(self) -> None:
        """Clear the record (the engine's ``forget`` makes a failure here a warning, never the task's end)."""
        self.store.delete(self.state_key)


def retry_ledger(context: Any, state_key: str, log: logging.Logger | Any) -> RetryLedger | None:
    """This task instance's ledger for ``state_key``; None without task_state_store (Airflow < 3.3)."""
    store = context.get("task_state_store") if AIRFLOW_V_3_3_PLUS else None
    return RetryLedger(store, state_key, log) if store is not None else None


def retry_plan(task: Any, context: Any) -> RetryPlan | None:
    """How Airflow will run ``task`` again if this try fails (None: it will not, or the upload must not be
    kept for it): the engine keeps a failed try's upload only where that retry will find it."""
    if not (task.keep_upload_for_retry and task.resume and will_retry(task, context)):
        return None
    return RetryPlan(delay=validation.duration("retry_delay", task.retry_delay or 0))


def will_retry(task: Any, context: Any) -> bool:
    """Whether Airflow will run ``task`` again if this try fails."""
    ti = context.get("ti")
    from_server = getattr(ti, "_ti_context_from_server", None)
    if from_server is not None and hasattr(from_server, "should_retry"):
        return bool(from_server.should_retry)
    try_number, max_tries = getattr(ti, "try_number", None), getattr(ti, "max_tries", None)
    if isinstance(try_number, int) and isinstance(max_tries, int):
        return try_number <= max_tries
    return bool(task.retries)
