"""Nightly database dump streamed straight to S3: no temporary file, no second copy on disk.

The dump command's stdout is uploaded as it is produced, in parts that grow as the dump does. If the
dump fails (non-zero exit anywhere in the pipeline: it runs under ``bash -o pipefail``), the upload is
aborted and nothing appears in S3; the task fails with the tail of the command's stderr.

For PostgreSQL use ``command="pg_dump --format=custom \"$DATABASE_URL\""`` (custom format is already
compressed) or ``"pg_dump \"$DATABASE_URL\" | zstd -T0"``. This example dumps SQLite with Python's
``sqlite3`` module so it runs anywhere; ``MPU_DUMP_DATABASE`` names the database (created if missing).
"""

from __future__ import annotations

import os
import shlex
import sqlite3
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, task

from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator

DATABASE = os.environ.get("MPU_DUMP_DATABASE", "/tmp/mpu-demo/app.sqlite3")
BUCKET = os.environ.get("MPU_BUCKET", "nightly-dumps")
DUMP_COMMAND = (
    f"{shlex.quote(sys.executable)} -c "
    + shlex.quote(
        "import sqlite3, sys\n"
        "out = sys.stdout\n"
        f"for line in sqlite3.connect({DATABASE!r}).iterdump():\n"
        "    out.write(line + '\\n')\n"
    )
    + " | gzip -6"
)


with DAG(
    dag_id="nightly_db_dump_streamed",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    tags=["s3", "backup"],
):

    @task
    def sample_database_if_missing() -> None:
        """Stand-in for a production database, so the example runs on a fresh machine."""
        path = Path(DATABASE)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT, payload TEXT)")
            db.executemany(
                "INSERT INTO events (kind, payload) VALUES (?, ?)",
                ((f"kind-{i % 17}", f"event {i} " + "y" * (i % 200)) for i in range(200_000)),
            )

    sample_database_if_missing() >> MultipartUploadOperator(
        task_id="stream_dump",
        command=DUMP_COMMAND,
        command_timeout=6 * 3600,
        key=f"s3://{BUCKET}/dumps/{{{{ ds }}}}/app.sql.gz",
        content_type="application/gzip",
        replace=True,
    )
