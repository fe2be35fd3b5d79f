"""``UploadLedger``: where the next try of an upload will look for the upload this try left.

One record (a dict) per upload target, written the moment an upload exists and cleared once it is
completed or gone. The engine reads and writes it through these three calls only; Airflow's
``task_state_store`` is one (``operators/retry_ledger.py``), a dict in a test is another.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from airflow_mpu_provider.multipart.upload import MultipartUpload


class UploadLedger(Protocol):
    def get(self) -> dict[str, Any] | None:
        """The record, or None when there is none."""

    def set(self, record: dict[str, Any]) -> None:
        """Write the record (raise if it could not be written: the upload is then aborted)."""

    def delete(self) -> None:
        """Clear the record (a failure is harmless: the next try finds the upload gone)."""


def forget(ledger: UploadLedger | None, log: logging.Logger | Any) -> None:
    """Clear a record whose upload is completed or gone. Failing to is harmless (the next try finds the
    upload gone), and must neither fail a finished upload nor hide the error of a failed one."""
    if ledger is None:
        return
    try:
        ledger.delete()
    except Exception as e:
        log.warning("Could not clear the record in %s (%s); a next try will find it gone.", ledger, e)


def recorded_upload_id(record: Any) -> str | None:
    """The UploadId a ledger record names, or None when it names none (no record, or not one of ours)."""
    if isinstance(record, Mapping) and record.get("upload_id"):
        return str(record["upload_id"])
    return None


def recorded_upload(
    client: Any, record: Mapping[str, Any], bucket: str, key: str, extra_args: Mapping[str, Any]
) -> MultipartUpload:
    """The upload a ledger record names (ours: it may be continued or aborted), at the record's bucket and
    key (those of this upload when the record does not say)."""
    return MultipartUpload(
        client,
        str(record.get("bucket", bucket)),
        str(record.get("key", key)),
        upload_id=str(record["upload_id"]),
        extra_args=extra_args,
    )
