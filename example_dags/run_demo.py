"""The README's first command: run the nightly-dump DAG through Airflow against an embedded S3.

Starts moto's S3 server on 127.0.0.1, points Airflow's ``aws_default`` connection at it, migrates a
throw-away SQLite metadata DB, runs ``airflow dags test nightly_db_dump`` and prints what landed in S3.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.local_airflow import (  # noqa: E402
    airflow_cli,
    airflow_environment,
    moto_server_process,
    s3_client,
)

BUCKET = "nightly-dumps"
#: A structlog line of the operator: "<time> [info     ] <message> [airflow.task.operators....Operator] loc=..."
OPERATOR_LINE = re.compile(r"\[(info|warning|error)\s*\]\s(.*?)\s+\[airflow\.task\.operators\.airflow_mpu_provider")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mpu-demo-") as tmp, moto_server_process() as endpoint:
        work = Path(tmp)
        s3 = s3_client(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        env = airflow_environment(
            work / "airflow",
            endpoint=endpoint,
            dags_folder=ROOT / "example_dags",
            MPU_BUCKET=BUCKET,
            MPU_DUMP_DATABASE=str(work / "app.sqlite3"),
            MPU_DUMP_DIR=str(work / "dumps"),
        )
        print(f"Embedded S3 (moto) at {endpoint}; AIRFLOW_HOME={env['AIRFLOW_HOME']}", flush=True)
        airflow_cli(env, "db", "migrate")
        run = airflow_cli(env, "dags", "test", "nightly_db_dump", "2026-11-24", check=False, timeout=900)
        log = run.stdout + run.stderr
        if os.environ.get("MPU_DEMO_VERBOSE") or run.returncode != 0:
            print(log)
        if run.returncode != 0:
            print(f"airflow dags test failed with exit code {run.returncode}")
            return run.returncode
        print("\nThe upload task's log (MultipartUploadOperator lines):")
        for line in log.splitlines():
            if match := OPERATOR_LINE.search(line):
                print(f"  {match.group(1):<7} {match.group(2)}")
        print("\nUploaded to the embedded S3:")
        for obj in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
            head = s3.head_object(Bucket=BUCKET, Key=obj["Key"])
            etag = head["ETag"].strip('"')
            parts = etag.rsplit("-", 1)[1] if "-" in etag else "1"
            local = work / "dumps" / f"app-{obj['Key'].split('/')[1]}.sql"
            body = s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
            same = local.exists() and hashlib.sha256(body).digest() == hashlib.sha256(local.read_bytes()).digest()
            print(f"  s3://{BUCKET}/{obj['Key']}")
            print(f"    size  {head['ContentLength']:,} bytes in {parts} parts, ETag {etag}")
            print(f"    byte-identical to {local}: {same}")
        pending = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        print(f"  incomplete multipart uploads left: {len(pending)}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
