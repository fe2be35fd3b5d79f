"""A large upload from inside a ``@task`` function, through ``S3MultipartHook`` rather than an operator.

For when the upload is one step of Python code (build a file, upload it, act on the result) rather
than a task of its own: the hook gives the operator's upload (parallel parts, checksums, resume of a
quiet upload found for the key, ``replace=False`` checked against the object) with the connection's
settings, and ``object_matches`` proves afterwards that the object is exactly the local file.
What the hook cannot give a ``@task`` is the operator's Airflow glue: the retry's resume through
task_state_store and ``on_kill``; use ``MultipartUploadOperator`` where those matter. (This upload sets a
content type and tags, which S3 does not show for an incomplete upload, so it never adopts a found one:
only a record could prove such an upload carries them.)

Settings come from environment variables so the file runs in tests and anywhere: ``MPU_BUCKET``,
``MPU_REPORT_DIR`` (``{ds}`` stands for the day), ``MPU_REPORT_ROWS``.
"""

from __future__ import annotations

import csv
import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, task

BUCKET = os.environ.get("MPU_BUCKET", "reports")
REPORT_DIR = os.environ.get("MPU_REPORT_DIR", "/tmp/mpu-demo/reports/{ds}")
ROWS = int(os.environ.get("MPU_REPORT_ROWS", "400000"))


with DAG(
    dag_id="taskflow_hook_upload",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    tags=["s3", "taskflow"],
):

    @task
    def build_report(ds: str | None = None) -> str:
        """Some file worth uploading in parts (a stand-in for an export or an extract)."""
        target = Path(REPORT_DIR.format(ds=ds)) / "orders.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".csv.partial")
        with partial.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["id", "customer", "amount_cents", "note"])
            writer.writerows((i, f"customer-{i % 9973}", (i * 7919) % 100_000, "x" * (i % 40)) for i in range(ROWS))
        partial.replace(target)  # never upload a half-written file
        return str(target)

    @task
    def upload_report(path: str, ds: str | None = None) -> dict:
        from airflow_mpu_provider.hooks.multipart import S3MultipartHook

        hook = S3MultipartHook(aws_conn_id="aws_default")
        return hook.upload_file(
            path,
            f"s3://{BUCKET}/reports/{ds}/orders.csv",
            replace=True,
            part_size=8 * 1024 * 1024,
            content_type="text/csv",
            tags={"produced-by": "taskflow_hook_upload"},
        )

    @task
    def check_report(path: str, uploaded: dict) -> None:
        from airflow_mpu_provider.hooks.multipart import S3MultipartHook

        if not S3MultipartHook().object_matches(path, uploaded["key"], uploaded["bucket"]):
            raise ValueError(f"s3://{uploaded['bucket']}/{uploaded['key']} does not hold exactly {path}")
        print(f"s3://{uploaded['bucket']}/{uploaded['key']} holds exactly {path} ({uploaded['size']:,} bytes)")

    report = build_report()
    check_report(report, upload_report(report))
