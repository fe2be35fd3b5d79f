"""Sweeping up incomplete multipart uploads that were left behind. No Airflow here.

An incomplete multipart upload is invisible in listings of objects but its parts are stored, and
billed, until it is completed or aborted. The file and stream engines abort their own uploads when
they fail for good, but a worker that dies hard (OOM kill, lost node) cannot: this sweep is what
cleans up after it, next to (or instead of) a bucket lifecycle rule with ``AbortIncompleteMultipartUpload``.

    sweep = StaleUploadSweep(client, "backups", "postgres/", older_than=timedelta(days=2))
    report = sweep.run()      # or dry_run=True to only report; sweep.cancel() from another thread

One job per step: list what is stale (``find_stale_uploads``), handle each upload (count its parts,
abort it), then report; an upload that cannot be aborted does not stop the others, and the sweep
raises ``StaleUploadCleanupError`` at the end naming them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow_mpu_provider.multipart.errors import MultipartUploadError, S3UploadError, UploadCancelledError
from airflow_mpu_provider.multipart.listing import list_incomplete_uploads
from airflow_mpu_provider.multipart.units import format_age, format_bytes, plural
from airflow_mpu_provider.multipart.upload import MultipartUpload

#: Default age past which an incomplete upload counts as stale.
DEFAULT_OLDER_THAN = timedelta(days=7)
#: Uploads logged one line each; the rest are only counted in the summary.
MAX_LOGGED_UPLOADS = 100
#: Uploads listed in the returned report (and so in XCom); the counts and bytes cover all of them.
MAX_REPORTED_UPLOADS = 1000
#: Failure messages quoted in the exception raised at the end.
MAX_QUOTED_FAILURES = 3


def _utcnow() -> datetime:
    """The current time, aware and in UTC (a seam for tests)."""
    return datetime.now(UTC)


class StaleUploadCleanupError(MultipartUploadError):
    """Some stale uploads could not be aborted (or inspected); the others were handled.

    ``failures`` holds ``(key, upload_id, message)`` for each of them and ``report`` the dict the
    sweep would have returned.
    """

    def __init__(self, message: str, *, failures: list[tuple[str, str, str]], report: dict[str, Any]) -> None:
        super().__init__(message)
        self.failures = failures
        self.report = report


@dataclass(frozen=True)
class StaleUpload:
    """An incomplete upload initiated before the cutoff."""

    key: str
    upload_id: str
    initiated: datetime


@dataclass(frozen=True)
class StaleListing:
    """What one listing of the prefix found."""

    stale: list[StaleUpload]
    listed: int
    newer: int


def find_stale_uploads(
    client: Any, bucket: str, prefix: str, cutoff: datetime, *, request_args: Mapping[str, Any] | None = None
) -> StaleListing:
    """Every incomplete upload under ``prefix`` initiated before ``cutoff`` (aware datetime)."""
    stale: list[StaleUpload] = []
    listed = newer = 0
    for upload in list_incomplete_uploads(client, bucket, prefix, extra_args=request_args):
        listed += 1
        key = upload.get("Key", "")
        initiated = upload.get("Initiated")
        if not key.startswith(prefix) or not isinstance(initiated, datetime):
            continue
        if initiated.tzinfo is None:
            initiated = initiated.replace(tzinfo=UTC)
        if initiated < cutoff:
            stale.append(StaleUpload(key, upload["UploadId"], initiated))
        else:
            newer += 1
    return StaleListing(stale, listed, newer)


class StaleUploadSweep:
    """Abort (or, with ``dry_run``, only report) the stale uploads under one bucket and prefix."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        older_than: timedelta = DEFAULT_OLDER_THAN,
        dry_run: bool = False,
        request_args: Mapping[str, Any] | None = None,
        log: logging.Logger | logging.LoggerAdapter | None = None,
    ) -> None:
        """``request_args``: RequestPayer / ExpectedBucketOwner, repeated on every call."""
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.older_than = older_than
        self.dry_run = dry_run
        self.request_args = dict(request_args or {})
        self.log = log or logging.getLogger(__name__)
        self._cancelled = threading.Event()
        self.where = f"s3://{bucket}/{prefix}"
        self.done: list[dict[str, Any]] = []
        self.failures: list[tuple[str, str, str]] = []
        self.gone = 0

    def cancel(self) -> None:
        """Stop before the next upload (from any thread); the one in progress finishes its abort."""
        self._cancelled.set()

    def run(self) -> dict[str, Any]:
        now = _utcnow()
        cutoff = now - self.older_than
        self.log.info(
            "%sLooking for multipart uploads under %s initiated before %s (more than %s ago).",
            "[dry run] " if self.dry_run else "",
            self.where,
            cutoff.isoformat(),
            self.older_than,
        )
        listing = find_stale_uploads(self.client, self.bucket, self.prefix, cutoff, request_args=self.request_args)
        self.log.info(
            "%d incomplete uploads under %s, %d of them stale.", listing.listed, self.where, len(listing.stale)
        )
        for item in listing.stale:
            if self._cancelled.is_set():
                raise UploadCancelledError(
                    f"the task was killed after handling {len(self.done)} of {len(listing.stale)} stale uploads "
                    f"under {self.where}"
                )
            self._handle(item, now, more_to_come=len(listing.stale) > MAX_LOGGED_UPLOADS)
        report = self._report(listing)
        self._raise_if_any_failed(len(listing.stale), report)
        return report

    # -- one upload -----------------------------------------------------------------------------

    def _handle(self, item: StaleUpload, now: datetime, *, more_to_come: bool) -> None:
        upload = MultipartUpload(
            self.client, self.bucket, item.key, upload_id=item.upload_id, extra_args=self.request_args
        )
        try:
            parts: list[dict[str, Any]] | None = upload.list_parts()[0]
        except S3UploadError as e:
            if e.code == "NoSuchUpload":  # completed or aborted since it was listed
                self.gone += 1
                self.log.info("s3://%s/%s (UploadId %s) is already gone.", self.bucket, item.key, item.upload_id)
                return
            parts = None
            self.log.warning(
                "Cannot list the parts of s3://%s/%s (UploadId %s), so its size is unknown; %s it all the same. (%s)",
                self.bucket,
                item.key,
                item.upload_id,
                "it would be aborted" if self.dry_run else "aborting",
                e,
            )
        if not self.dry_run:
            try:
                # An upload whose parts cannot be listed cannot be listed after the abort either.
                upload.abort(confirm=parts is not None)
            except Exception as e:
                self.failures.append((item.key, item.upload_id, str(e) if isinstance(e, S3UploadError) else f"{e!r}"))
                self.log.warning("Cannot abort s3://%s/%s (UploadId %s): %s", self.bucket, item.key, item.upload_id, e)
                return
        nbytes = sum(int(p.get("Size") or 0) for p in parts) if parts is not None else None
        age = (now - item.initiated).total_seconds()
        self.done.append(
            {
                "key": item.key,
                "upload_id": item.upload_id,
                "initiated": item.initiated.isoformat(),
                "age_seconds": age,
                "parts": len(parts) if parts is not None else None,
                "bytes": nbytes,
            }
        )
        if len(self.done) <= MAX_LOGGED_UPLOADS:
            self.log.info(
                "%s s3://%s/%s (UploadId %s): initiated %s (%s ago), %s.",
                "Would abort" if self.dry_run else "Aborted",
                self.bucket,
                item.key,
                item.upload_id,
                item.initiated.isoformat(),
                format_age(age),
                f"{plural(len(parts), 'part')}, {format_bytes(nbytes or 0)}" if parts is not None else "size unknown",
            )
        if len(self.done) == MAX_LOGGED_UPLOADS and more_to_come:
            self.log.info("Not logging the remaining uploads one by one; the summary counts them all.")

    # -- the end --------------------------------------------------------------------------------

    def _report(self, listing: StaleListing) -> dict[str, Any]:
        total_bytes = sum(u["bytes"] or 0 for u in self.done)
        size_unknown = sum(u["bytes"] is None for u in self.done)
        oldest = max((u["age_seconds"] for u in self.done), default=None)
        self.log.info(
            "%s%s %s under %s holding %s (%d bytes%s)%s; %d newer kept, %d already gone, %d failed.",
            "[dry run] " if self.dry_run else "",
            "Would abort" if self.dry_run else "Aborted",
            plural(len(self.done), "stale multipart upload"),
            self.where,
            format_bytes(total_bytes),
            total_bytes,
            f"; {size_unknown} more of unknown size, whose parts could not be listed" if size_unknown else "",
            f", the oldest {format_age(oldest)} old" if oldest is not None else "",
            listing.newer,
            self.gone,
            len(self.failures),
        )
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "dry_run": self.dry_run,
            # A dry run aborted nothing: it says what it would have aborted instead.
            "aborted": 0 if self.dry_run else len(self.done),
            "would_abort": len(self.done) if self.dry_run else 0,
            "bytes": total_bytes,
            "size_unknown": size_unknown,
            "oldest_age_seconds": oldest,
            "uploads": self.done[:MAX_REPORTED_UPLOADS],
        }

    def _raise_if_any_failed(self, stale: int, report: dict[str, Any]) -> None:
        if not self.failures:
            return
        quoted = "; ".join(
            f"s3://{self.bucket}/{k} (UploadId {u}): {m}" for k, u, m in self.failures[:MAX_QUOTED_FAILURES]
        )
        more = len(self.failures) - MAX_QUOTED_FAILURES
        raise StaleUploadCleanupError(
            f"{len(self.failures)} of {stale} stale multipart uploads under {self.where} could not be "
            f"{'inspected' if self.dry_run else 'aborted'} ({len(self.done)} were handled): {quoted}"
            + (f"; and {more} more (see the task log)." if more > 0 else "."),
            failures=self.failures,
            report=report,
        )
