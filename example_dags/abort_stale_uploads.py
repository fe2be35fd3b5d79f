"""Daily sweep of stale multipart uploads: abort the ones under ``dumps/`` started more than 2 days ago.

An incomplete multipart upload is invisible among the bucket's objects, yet its parts are stored and
billed until it is completed or aborted. MultipartUploadOperator aborts its own uploads when it fails
for good, but a worker that dies hard (OOM kill, lost node) cannot; this DAG sweeps what is left.

The server-side alternative is an S3 lifecycle rule with ``AbortIncompleteMultipartUpload``
(``DaysAfterInitiation``): it needs no task, but it reports nothing and needs the rights to change the
bucket's configuration. This operator reports what it cleaned (one log line per upload, a summary, and
the counts and bytes in XCom), and it can run next to such a rule.

Keep ``older_than`` above the longest upload including its retries: a retry resumes its upload, and
an upload aborted under it must start again from nothing. ``MPU_BUCKET`` names the bucket.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_mpu_provider.operators.cleanup import S3AbortStaleUploadsOperator

BUCKET = os.environ.get("MPU_BUCKET", "nightly-dumps")


with DAG(
    dag_id="abort_stale_uploads",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
    tags=["s3", "cleanup"],
):
    S3AbortStaleUploadsOperator(
        task_id="abort_stale_uploads",
        bucket=BUCKET,
        prefix="dumps/",
        older_than=timedelta(days=2),
    )
