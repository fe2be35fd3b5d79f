"""Nightly database dump to S3: dump the database, then upload the dump as a resumable multipart upload.

The dump uses SQLite's own dump (``sqlite3`` ships with Python, so this runs anywhere); for
PostgreSQL replace ``dump_database`` with a BashOperator running
``pg_dump --format=custom --file=/data/dumps/app-{{ ds }}.dump "$DATABASE_URL"``.

Settings come from environment variables so the same file runs in the README's demo and in production:
``MPU_DUMP_DATABASE`` (SQLite file to dump; a sample one is created if missing), ``MPU_DUMP_DIR``,
``MPU_BUCKET``.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, task

from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator

DATABASE = os.environ.get("MPU_DUMP_DATABASE", "/tmp/mpu-demo/app.sqlite3")
DUMP_DIR = os.environ.get("MPU_DUMP_DIR", "/tmp/mpu-demo/dumps")
BUCKET = os.environ.get("MPU_BUCKET", "nightly-dumps")
SAMPLE_ROWS = int(os.environ.get("MPU_SAMPLE_ROWS", "300000"))


def create_sample_database(path: Path, rows: int) -> None:
    """A stand-in for the production database, so the example runs on a fresh machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount_cents INTEGER, note TEXT)")
        db.executemany(
            "INSERT INTO orders (customer, amount_cents, note) VALUES (?, ?, ?)",
            ((f"customer-{i % 9973}", (i * 7919) % 100_000, f"order {i} " + "x" * (i % 160)) for i in range(rows)),
        )


with DAG(
    dag_id="nightly_db_dump",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 3, "retry_delay": timedelta(minutes=2)},
    tags=["s3", "backup"],
):

    @task
    def dump_database(ds: str | None = None) -> str:
        source = Path(DATABASE)
        if not source.exists():
            create_sample_database(source, SAMPLE_ROWS)
        target = Path(DUMP_DIR) / f"app-{ds}.sql"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".sql.partial")
        with sqlite3.connect(source) as db, partial.open("w") as out:
            for line in db.iterdump():
                out.write(line + "\n")
        partial.replace(target)  # the upload must never see a half-written dump
        return str(target)

    dump_path = dump_database()

    MultipartUploadOperator(
        task_id="upload_dump",
        file=dump_path,
        key=f"s3://{BUCKET}/dumps/{{{{ ds }}}}/app.sql",
        content_type="application/sql",
        metadata={"source": "nightly_db_dump", "run-id": "{{ run_id }}"},
        storage_class="STANDARD_IA",
        replace=True,
    )
