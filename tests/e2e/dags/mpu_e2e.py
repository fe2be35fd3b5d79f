"""The DAG the end-to-end tests run through Airflow; every setting comes from the environment."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator

env = os.environ.get


def _no_timeout_after_the_first_try(context) -> None:
    """pre_execute runs before Airflow reads execution_timeout (3.1 and 3.3 alike): a retry gets none, so
    a test can time out its first try and let the retry take what time a busy machine needs."""
    if context["ti"].try_number > 1:
        context["task"].execution_timeout = None


# Set only when a test asks: otherwise the operator's own defaults apply (adopt_quiet_after: 15 min).
optional: dict = {}
if env("MPU_E2E_ADOPT_QUIET_AFTER"):
    optional["adopt_quiet_after"] = timedelta(seconds=float(env("MPU_E2E_ADOPT_QUIET_AFTER")))
if env("MPU_E2E_EXECUTION_TIMEOUT"):
    optional["execution_timeout"] = timedelta(seconds=float(env("MPU_E2E_EXECUTION_TIMEOUT")))
if env("MPU_E2E_TIMEOUT_FIRST_TRY_ONLY") == "true":
    optional["pre_execute"] = _no_timeout_after_the_first_try
if env("MPU_E2E_UPLOAD_WINDOW"):
    optional["upload_window"] = env("MPU_E2E_UPLOAD_WINDOW")
    optional["window_timezone"] = env("MPU_E2E_WINDOW_TIMEZONE", "UTC")
if env("MPU_E2E_MAX_BANDWIDTH"):
    optional["max_bandwidth"] = int(env("MPU_E2E_MAX_BANDWIDTH"))
if env("MPU_E2E_FINISH_BY"):
    optional["finish_by"] = env("MPU_E2E_FINISH_BY")

with DAG(dag_id="mpu_e2e", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    MultipartUploadOperator(
        task_id="upload",
        file=None if env("MPU_E2E_COMMAND") else env("MPU_E2E_FILE", "/nonexistent"),
        command=env("MPU_E2E_COMMAND"),
        key=env("MPU_E2E_KEY", "s3://e2e-bucket/e2e/object.bin"),
        part_size=int(env("MPU_E2E_PART_SIZE", str(5 * 1024 * 1024))),
        concurrency=int(env("MPU_E2E_CONCURRENCY", "4")),
        replace=env("MPU_E2E_REPLACE", "true") == "true",
        resume=env("MPU_E2E_RESUME", "true") == "true",
        retries=int(env("MPU_E2E_RETRIES", "0")),
        retry_delay=timedelta(seconds=float(env("MPU_E2E_RETRY_DELAY", "1"))),
        progress_interval=float(env("MPU_E2E_PROGRESS_INTERVAL", "1")),
        aws_conn_id=env("MPU_E2E_CONN_ID", "aws_default"),
        **optional,
    )
