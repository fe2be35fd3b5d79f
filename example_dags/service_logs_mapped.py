"""A day of service logs to S3, one object per log file: dynamic task mapping, one mapped task per file.

``list_log_files`` lists the day's files (``*.log*`` in ``MPU_LOG_DIR``, where ``{ds}`` stands for the
day; sample ones are written if the folder is empty so the example runs anywhere) and returns one
``{file, key}`` per file;
``MultipartUploadOperator.partial(...).expand_kwargs(...)`` turns that list into one task instance per
file. Each file is then retried, resumed, aborted, logged and shown in the UI on its own: a failed
upload of ``api.log`` re-sends only that file (and only its missing parts), not the whole day.
``max_active_tis_per_dagrun`` caps how many files are sent at once (each upload already sends
``concurrency`` parts in parallel).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, task

from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator

#: Where a day's log files are; ``{ds}`` is replaced by the day (YYYY-MM-DD).
LOG_DIR = os.environ.get("MPU_LOG_DIR", "/tmp/mpu-demo/daily-logs/{ds}")
BUCKET = os.environ.get("MPU_BUCKET", "service-logs")
#: Files uploaded at the same time; each upload sends its own parts in parallel on top of that.
PARALLEL_FILES = int(os.environ.get("MPU_PARALLEL_FILES", "4"))


def write_sample_logs(day: Path, ds: str) -> None:
    """Stand-ins for a day of a service's logs, so the example runs on a fresh machine."""
    day.mkdir(parents=True, exist_ok=True)
    for service, lines in (("api", 60_000), ("worker", 150_000), ("scheduler", 20_000)):
        with (day / f"{service}.log").open("w") as f:
            for i in range(lines):
                f.write(f"{ds}T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d} {service} INFO event {i} ok\n")


with DAG(
    dag_id="service_logs_mapped",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 3, "retry_delay": timedelta(minutes=2)},
    tags=["s3", "logs"],
):

    @task
    def list_log_files(ds: str | None = None) -> list[dict[str, str]]:
        """One ``{file, key}`` per log file of the day: the arguments of one mapped upload each."""
        day = Path(LOG_DIR.format(ds=ds))
        if not day.is_dir() or not any(day.iterdir()):
            write_sample_logs(day, str(ds))
        files = sorted(p for p in day.glob("*.log*") if p.is_file())
        return [{"file": str(path), "key": f"logs/{ds}/{path.name}"} for path in files]

    MultipartUploadOperator.partial(
        task_id="upload_log_file",
        bucket=BUCKET,
        encrypt=True,
        tags={"retention": "90d", "kind": "service-logs"},
        replace=True,
        max_active_tis_per_dagrun=PARALLEL_FILES,
        map_index_template="{{ task.key }}",  # the UI names each mapped task by its key, not 0, 1, 2...
    ).expand_kwargs(list_log_files())
