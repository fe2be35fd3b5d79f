"""A day of service logs to S3: bundle yesterday's log files into one gzip, upload it, delete the bundle.

``MPU_LOG_DIR`` holds the service's log files (``*.log``); sample ones are written if it is empty so
the example runs anywhere. The bundle is uploaded with SSE-S3 encryption and tagged for lifecycle rules.
"""

from __future__ import annotations

import gzip
import os
import shutil
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, task

from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator

LOG_DIR = os.environ.get("MPU_LOG_DIR", "/tmp/mpu-demo/logs")
BUNDLE_DIR = os.environ.get("MPU_BUNDLE_DIR", "/tmp/mpu-demo/bundles")
BUCKET = os.environ.get("MPU_BUCKET", "service-logs")


with DAG(
    dag_id="service_logs",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 3, "retry_delay": timedelta(minutes=2)},
    tags=["s3", "logs"],
):

    @task
    def bundle_logs(ds: str | None = None) -> str:
        logs = Path(LOG_DIR)
        logs.mkdir(parents=True, exist_ok=True)
        if not any(logs.glob("*.log")):
            for service in ("api", "worker"):
                with (logs / f"{service}.log").open("w") as f:
                    for i in range(200_000):
                        f.write(f"{ds}T00:{i // 6000 % 60:02d}:{i // 100 % 60:02d} {service} INFO request {i} ok\n")
        bundle = Path(BUNDLE_DIR) / f"services-{ds}.log.gz"
        bundle.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(bundle, "wb", compresslevel=6) as out:
            for log_file in sorted(logs.glob("*.log")):
                with log_file.open("rb") as f:
                    shutil.copyfileobj(f, out, 1024 * 1024)
        return str(bundle)

    bundle = bundle_logs()

    upload = MultipartUploadOperator(
        task_id="upload_logs",
        file=bundle,
        bucket=BUCKET,
        key="logs/{{ ds }}/services.log.gz",
        content_type="application/gzip",
        encrypt=True,
        tags={"retention": "90d", "kind": "service-logs"},
        replace=True,
    )

    @task
    def remove_bundle(path: str) -> None:
        Path(path).unlink(missing_ok=True)

    upload >> remove_bundle(bundle)
