"""Many files the Airflow way: the mapped example DAG uploads each log file as its own mapped task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.e2e.conftest import BUCKET
from tests.support.local_airflow import airflow_cli, airflow_environment

pytestmark = pytest.mark.e2e

EXAMPLE_DAGS = Path(__file__).parents[2] / "example_dags"


def cli_json(env: dict[str, str], *args: str) -> list[dict]:
    """The JSON an ``airflow ... -o json`` command printed (Airflow may log warnings to stdout before it)."""
    out = airflow_cli(env, *args, "-o", "json").stdout
    return json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("[")))


def mapped_task_states(airflow_home: Path, dag_id: str, task_id: str) -> dict[int, str]:
    """map_index -> state of ``task_id`` in the DAG's latest run, as Airflow's own CLI reports them."""
    env = airflow_environment(airflow_home, endpoint="http://127.0.0.1:9", dags_folder=EXAMPLE_DAGS)
    runs = cli_json(env, "dags", "list-runs", dag_id)
    run_id = max(runs, key=lambda r: r["start_date"] or "")["run_id"]
    states = cli_json(env, "tasks", "states-for-dag-run", dag_id, run_id)
    return {int(ti["map_index"]): ti["state"] for ti in states if ti["task_id"] == task_id}


def test_mapped_example_uploads_every_log_file_of_the_day_as_its_own_task(run_dag, s3, tmp_path, airflow_home):
    logs = tmp_path / "logs"
    logs.mkdir()
    files = [
        make_file(logs / "api.log", 7 * MiB + 3, seed=1),
        make_file(logs / "worker.log", 1 * MiB, seed=2),
        make_file(logs / "scheduler.log.1", 123_457, seed=3),
        make_file(logs / "empty.log", 0),
    ]
    (logs / "not-a-log.txt").write_text("left alone")

    result = run_dag(dag_id="service_logs_mapped", dags_folder=EXAMPLE_DAGS, MPU_BUCKET=BUCKET, MPU_LOG_DIR=str(logs))
    assert result.succeeded, result.log[-5000:]

    stored = {o["Key"]: o for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="logs/").get("Contents", [])}
    uploaded = {key.rsplit("/", 1)[1]: key for key in stored}
    assert set(uploaded) == {f.name for f in files}  # every log file, nothing else
    for path in files:
        assert sha256_object(s3, BUCKET, uploaded[path.name]) == sha256_file(path), path.name
        assert s3.head_object(Bucket=BUCKET, Key=uploaded[path.name])["ServerSideEncryption"] == "AES256"
    # One mapped task instance per file, each successful, each having uploaded exactly one file.
    states = mapped_task_states(airflow_home, "service_logs_mapped", "upload_log_file")
    assert states == {i: "success" for i in range(len(files))}
    for path in files:
        assert result.log.count(f"Uploaded {path} to s3://{BUCKET}/") == 1, path.name
    for key in uploaded.values():
        assert incomplete_uploads(s3, BUCKET, key) == []
        s3.delete_object(Bucket=BUCKET, Key=key)
