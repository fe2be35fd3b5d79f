"""The TaskFlow example: a ``@task`` function uploads with S3MultipartHook and checks object_matches,
through ``airflow dags test`` against moto's server (over the counting proxy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import incomplete_uploads, sha256_file, sha256_object
from tests.e2e.conftest import BUCKET

pytestmark = pytest.mark.e2e

EXAMPLE_DAGS = Path(__file__).parents[2] / "example_dags"


def test_taskflow_example_uploads_with_the_hook_and_proves_the_object_is_the_file(run_dag, proxy, s3, tmp_path):
    reports = tmp_path / "reports"
    result = run_dag(
        dag_id="taskflow_hook_upload",
        dags_folder=EXAMPLE_DAGS,
        MPU_BUCKET=BUCKET,
        MPU_REPORT_DIR=f"{reports}/{{ds}}",
        MPU_REPORT_ROWS="300000",  # ~14 MiB: two 8 MiB parts
    )
    assert result.succeeded, result.log[-5000:]
    [path] = list(reports.glob("*/orders.csv"))
    key = f"reports/{path.parent.name}/orders.csv"
    try:
        assert sha256_object(s3, BUCKET, key) == sha256_file(path)
        assert s3.head_object(Bucket=BUCKET, Key=key)["ContentType"] == "text/csv"
        parts = proxy.count("UploadPart")
        assert parts == -(-path.stat().st_size // (8 * 1024 * 1024)) and parts >= 2  # multipart, each part once
        assert f"holds exactly {path}" in result.text  # check_report ran object_matches and it held
        assert incomplete_uploads(s3, BUCKET, key) == []
    finally:
        s3.delete_object(Bucket=BUCKET, Key=key)
