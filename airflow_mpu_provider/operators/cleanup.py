"""S3AbortStaleUploadsOperator: abort incomplete multipart uploads that were left behind.

An incomplete multipart upload is invisible in listings of objects but its parts are stored, and
billed, until the upload is completed or aborted. MultipartUploadOperator aborts its own uploads
when it fails for good, but a worker that dies hard (OOM kill, lost node) cannot; this operator is
the sweep for what is left.

The server-side alternative is a bucket lifecycle rule with ``AbortIncompleteMultipartUpload``
(``DaysAfterInitiation``); it needs no task but reports nothing and needs the rights to change the
bucket's configuration. This operator can run next to such a rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_mpu_provider.multipart import validation
from airflow_mpu_provider.multipart.errors import (
    MultipartUploadError,
    S3UploadError,
    UploadCancelledError,
)
from airflow_mpu_provider.multipart.plan import format_bytes
from airflow_mpu_provider.multipart.upload import MultipartUpload, list_incomplete_uploads
from airflow_mpu_provider.operators.s3_target import bucket_and_path
from airflow_mpu_provider.version_compat import BaseOperator

if TYPE_CHECKING:
    try:
        from airflow.sdk import Context
    except ImportError:  # pragma: no cover
        from airflow.utils.context import Context  # type: ignore[no-redef]

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


def _format_age(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


class StaleUploadCleanupError(MultipartUploadError):
    """Some stale uploads could not be aborted (or inspected); the others were handled.

    ``failures`` holds ``(key, upload_id, message)`` for each of them and ``report`` the dict the
    operator would have returned.
    """

    def __init__(self, message: str, *, failures: list[tuple[str, str, str]], report: dict[str, Any]) -> None:
        super().__init__(message)
        self.failures = failures
        self.report = report


class S3AbortStaleUploadsOperator(BaseOperator):
    """
    Abort the incomplete multipart uploads under a bucket and prefix that were started long ago.

    Every upload whose key starts with ``prefix`` and that was initiated more than ``older_than``
    ago is aborted, which deletes its parts and stops their storage charges; the bytes its parts
    held are counted first (ListParts). An upload whose parts cannot be listed is aborted all the same
    and reported with its size unknown (``parts`` and ``bytes`` None): ListParts of an SSE-C upload
    created with a checksum needs the customer key, which only its uploader has. One line is logged
    per upload (the first ``MAX_LOGGED_UPLOADS``) and a summary at the end. An upload that cannot be
    aborted does not stop the others: the task fails at the end, naming how many failed and why.

    Keep ``older_than`` well above the longest upload, retries included: a MultipartUploadOperator
    retry resumes its upload, and an upload aborted under it must start again from nothing.

    The returned dict (pushed to XCom) is::

        {"bucket", "prefix", "dry_run", "aborted": count, "bytes": bytes their parts held (those of
         known size), "size_unknown": count of uploads whose parts could not be listed,
         "oldest_age_seconds": float | None,
         "uploads": [{"key", "upload_id", "initiated", "age_seconds", "parts", "bytes"}, ...]}

    with at most ``MAX_REPORTED_UPLOADS`` entries in ``uploads`` (the counts cover all of them).

    :param bucket: the bucket; None when ``prefix`` is an ``s3://bucket/prefix`` URL. (templated)
    :param prefix: only uploads whose key starts with this; "" for the whole bucket. It is a plain
        string prefix, as in S3: "dumps" also matches "dumps-old/...", "dumps/" does not. (templated)
    :param older_than: only uploads initiated more than this long ago: a ``timedelta`` or seconds
        (int or float, >= 0); default 7 days.
    :param dry_run: list and report what would be aborted, abort nothing.
    :param request_payer: "requester" for a requester-pays bucket the connection does not own; sent
        with every call (ListMultipartUploads, ListParts, AbortMultipartUpload).
    :param expected_bucket_owner: account id the bucket must belong to; sent with every call, so that
        nothing is listed or aborted in a bucket of another account.
    :param aws_conn_id: Airflow connection used through S3Hook.
    :param verify: whether to verify SSL certificates (False, or a CA bundle path), as in S3Hook.
    """

    template_fields: Sequence[str] = ("bucket", "prefix")
    ui_color = "#f0e4e4"

    def __init__(
        self,
        *,
        bucket: str | None = None,
        prefix: str = "",
        older_than: timedelta | float = DEFAULT_OLDER_THAN,
        dry_run: bool = False,
        request_payer: str | None = None,
        expected_bucket_owner: str | None = None,
        aws_conn_id: str | None = "aws_default",
        verify: str | bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bucket = bucket
        self.prefix = prefix
        self.older_than = validation.duration("older_than", older_than)
        self.request_payer = validation.optional_text("request_payer", request_payer)
        self.expected_bucket_owner = validation.optional_text("expected_bucket_owner", expected_bucket_owner)
        self.dry_run = dry_run
        self.aws_conn_id = aws_conn_id
        self.verify = verify
        self._killed = False

    # -- inputs -------------------------------------------------------------------------------

    def resolve_target(self) -> tuple[str, str]:
        """(bucket, prefix) from ``bucket`` + ``prefix`` or an ``s3://bucket/prefix`` URL."""
        return bucket_and_path(self.bucket, self.prefix or "", "prefix")

    def request_args(self) -> dict[str, str]:
        """The per-request arguments every call repeats (see ``multipart.request_args``)."""
        args = {"RequestPayer": self.request_payer, "ExpectedBucketOwner": self.expected_bucket_owner}
        return {name: value for name, value in args.items() if value}

    def s3_client(self) -> Any:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=self.aws_conn_id, verify=self.verify).get_conn()

    # -- run ----------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        bucket, prefix = self.resolve_target()
        client = self.s3_client()
        now = _utcnow()
        cutoff = now - self.older_than
        where = f"s3://{bucket}/{prefix}"
        verb = "Would abort" if self.dry_run else "Aborted"
        self.log.info(
            "%sLooking for multipart uploads under %s initiated before %s (more than %s ago).",
            "[dry run] " if self.dry_run else "",
            where,
            cutoff.isoformat(),
            self.older_than,
        )

        stale: list[dict[str, Any]] = []
        listed = kept = 0
        request_args = self.request_args()
        for upload in list_incomplete_uploads(client, bucket, prefix, extra_args=request_args):
            listed += 1
            key = upload.get("Key", "")
            initiated = upload.get("Initiated")
            if not key.startswith(prefix) or not isinstance(initiated, datetime):
                continue
            if initiated.tzinfo is None:
                initiated = initiated.replace(tzinfo=UTC)
            if initiated < cutoff:
                stale.append({"key": key, "upload_id": upload["UploadId"], "initiated": initiated})
            else:
                kept += 1
        self.log.info("%d incomplete uploads under %s, %d of them stale.", listed, where, len(stale))

        done: list[dict[str, Any]] = []
        failures: list[tuple[str, str, str]] = []
        total_bytes = 0
        size_unknown = gone = 0
        for item in stale:
            if self._killed:
                raise UploadCancelledError(
                    f"the task was killed after handling {len(done)} of {len(stale)} stale uploads under {where}"
                )
            key, upload_id = item["key"], item["upload_id"]
            upload = MultipartUpload(client, bucket, key, upload_id=upload_id, extra_args=request_args)
            parts: list[dict[str, Any]] | None
            try:
                parts, _ = upload.list_parts()
            except S3UploadError as e:
                if e.code == "NoSuchUpload":  # completed or aborted since it was listed
                    gone += 1
                    self.log.info("s3://%s/%s (UploadId %s) is already gone.", bucket, key, upload_id)
                    continue
                parts = None
                self.log.warning(
                    "Cannot list the parts of s3://%s/%s (UploadId %s), so its size is unknown; %s it all the "
                    "same. (%s)",
                    bucket,
                    key,
                    upload_id,
                    "it would be aborted" if self.dry_run else "aborting",
                    e,
                )
            nbytes = sum(int(p.get("Size") or 0) for p in parts) if parts is not None else None
            if not self.dry_run:
                try:
                    # An upload whose parts cannot be listed cannot be listed after the abort either.
                    upload.abort(confirm=parts is not None)
                except Exception as e:
                    failures.append((key, upload_id, str(e) if isinstance(e, S3UploadError) else f"{e!r}"))
                    self.log.warning("Cannot abort s3://%s/%s (UploadId %s): %s", bucket, key, upload_id, e)
                    continue
            age = (now - item["initiated"]).total_seconds()
            total_bytes += nbytes or 0
            size_unknown += nbytes is None
            done.append(
                {
                    "key": key,
                    "upload_id": upload_id,
                    "initiated": item["initiated"].isoformat(),
                    "age_seconds": age,
                    "parts": len(parts) if parts is not None else None,
                    "bytes": nbytes,
                }
            )
            if len(done) <= MAX_LOGGED_UPLOADS:
                self.log.info(
                    "%s s3://%s/%s (UploadId %s): initiated %s (%s ago), %s.",
                    verb,
                    bucket,
                    key,
                    upload_id,
                    item["initiated"].isoformat(),
                    _format_age(age),
                    f"{len(parts)} parts, {format_bytes(nbytes or 0)}" if parts is not None else "size unknown",
                )
            if len(done) == MAX_LOGGED_UPLOADS and len(stale) > MAX_LOGGED_UPLOADS:
                self.log.info("Not logging the remaining uploads one by one; the summary counts them all.")

        oldest = max((u["age_seconds"] for u in done), default=None)
        report: dict[str, Any] = {
            "bucket": bucket,
            "prefix": prefix,
            "dry_run": self.dry_run,
            "aborted": len(done),
            "bytes": total_bytes,
            "size_unknown": size_unknown,
            "oldest_age_seconds": oldest,
            "uploads": done[:MAX_REPORTED_UPLOADS],
        }
        self.log.info(
            "%s%s %d stale multipart uploads under %s holding %s (%d bytes%s)%s; %d newer kept, %d already gone, "
            "%d failed.",
            "[dry run] " if self.dry_run else "",
            verb,
            len(done),
            where,
            format_bytes(total_bytes),
            total_bytes,
            f"; {size_unknown} more of unknown size, whose parts could not be listed" if size_unknown else "",
            f", the oldest {_format_age(oldest)} old" if oldest is not None else "",
            kept,
            gone,
            len(failures),
        )
        if failures:
            quoted = "; ".join(f"s3://{bucket}/{k} (UploadId {u}): {m}" for k, u, m in failures[:MAX_QUOTED_FAILURES])
            more = len(failures) - MAX_QUOTED_FAILURES
            raise StaleUploadCleanupError(
                f"{len(failures)} of {len(stale)} stale multipart uploads under {where} could not be "
                f"{'inspected' if self.dry_run else 'aborted'} ({len(done)} were handled): {quoted}"
                + (f"; and {more} more (see the task log)." if more > 0 else "."),
                failures=failures,
                report=report,
            )
        return report

    def on_kill(self) -> None:
        """Stop before the next upload; the one in progress finishes its abort."""
        self._killed = True
