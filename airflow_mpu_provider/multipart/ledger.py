"""``UploadLedger``: where the next try of an upload will look for the upload this try left.

One record (a dict) per upload target, written the moment an upload exists and cleared once it is
completed or gone. The engine reads and writes it through these three calls only; Airflow's
``task_state_store`` is one (``operators/retry_ledger.py``), a dict in a test is another.
"""

from __future__ import annotations

from typing import Any, Protocol


class UploadLedger(Protocol):
    def get(self) -> dict[str, Any] | None:
        """The record, or None when there is none."""

    def set(self, record: dict[str, Any]) -> None:
        """Write the record (raise if it could not be written: the upload is then aborted)."""

    def delete(self) -> None:
        """Clear the record (a failure is harmless: the next try finds the upload gone)."""
