"""S3AbortStaleUploadsOperator: abort incomplete multipart uploads that were left behind.

An incomplete multipart upload is invisible in listings of objects but its parts are stored, and
billed, until the upload is completed or aborted. MultipartUploadOperator aborts its own uploads
when it fails for good, but a worker that dies hard (OOM kill, lost node) cannot; this operator is
the sweep for what is left. The sweep itself is ``multipart.stale.StaleUploadSweep``, run through
``S3MultipartHook.abort_stale_uploads`` (usable from a ``@task`` too); this module is the Airflow glue.

The server-side alternative is a bucket lifecycle rule with ``AbortIncompleteMultipartUpload``
(``DaysAfterInitiation``); it needs no task but reports nothing and needs the rights to change the
bucket's configuration. This operator can run next to such a rule.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_mpu_provider.hooks.multipart import S3MultipartHook
from airflow_mpu_provider.multipart import (  # noqa: F401  (StaleUploadCleanupError: importable from here)
    DEFAULT_OLDER_THAN,
    StaleUploadCleanupError,
    bucket_and_path,
    validation,
)
from airflow_mpu_provider.version_compat import BaseOperator

if TYPE_CHECKING:
    try:
        from airflow.sdk import Context
    except ImportError:  # pragma: no cover
        from airflow.utils.context import Context  # type: ignore[no-redef]


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

        {"bucket", "prefix", "dry_run", "aborted": count (0 in a dry run), "would_abort": count a dry
         run would have aborted (0 otherwise), "bytes": bytes their parts held (those of known size),
         "size_unknown": count of uploads whose parts could not be listed,
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

    # -- inputs -------------------------------------------------------------------------------

    def resolve_target(self) -> tuple[str, str]:
        """(bucket, prefix) from ``bucket`` + ``prefix`` or an ``s3://bucket/prefix`` URL."""
        return bucket_and_path(self.bucket, self.prefix or "", "prefix")

    def request_args(self) -> dict[str, str]:
        """The per-request arguments every call repeats (see ``multipart.request_args``)."""
        args = {"RequestPayer": self.request_payer, "ExpectedBucketOwner": self.expected_bucket_owner}
        return {name: value for name, value in args.items() if value}

    @functools.cached_property
    def hook(self) -> S3MultipartHook:
        return S3MultipartHook(aws_conn_id=self.aws_conn_id, verify=self.verify)

    # -- run ----------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        bucket, prefix = self.resolve_target()
        return self.hook.abort_stale_uploads(
            bucket, prefix, self.older_than, dry_run=self.dry_run, request_args=self.request_args()
        )

    def on_kill(self) -> None:
        """Stop before the next upload; the one in progress finishes its abort."""
        self.hook.cancel()
