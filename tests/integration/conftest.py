"""Integration harness: the operator against moto's S3 server over HTTP, through an Airflow connection.

The connection is an ``AIRFLOW_CONN_MPU_IT`` environment variable whose ``endpoint_url`` is the
counting proxy in front of the server, so the S3Hook path users rely on is the one under test.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.local_airflow import ACCESS_KEY, REGION, SECRET_KEY

BUCKET = "it-bucket"
CONN_ID = "mpu_it"


@pytest.fixture(scope="session", autouse=True)
def it_bucket(moto_endpoint) -> str:
    from tests.support.local_airflow import s3_client

    s3_client(moto_endpoint).create_bucket(Bucket=BUCKET)
    return BUCKET


@pytest.fixture
def connection(monkeypatch, proxy) -> Callable[..., str]:
    """Define the Airflow connection ``mpu_it`` to the proxy, with optional extra fields; returns its id."""

    def define(**extra: Any) -> str:
        value = {
            "conn_type": "aws",
            "login": ACCESS_KEY,
            "password": SECRET_KEY,
            "extra": {"endpoint_url": proxy.url, "region_name": REGION, **extra},
        }
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(value))
        return CONN_ID

    define()
    return define


class FakeTaskInstance:
    """What the operator uses of a task instance: XCom and the retry bookkeeping."""

    def __init__(self, *, try_number: int = 1, max_tries: int = 0, on_push: Callable[[], None] | None = None):
        self.try_number = try_number
        self.max_tries = max_tries
        self.xcom: dict[str, Any] = {}
        self._on_push = on_push

    def xcom_push(self, key: str, value: Any) -> None:
        json.dumps(value)  # XCom values must be JSON-able
        self.xcom[key] = value
        if self._on_push is not None:
            self._on_push()


class FakeStateStore:
    """A dict with task_state_store's interface (get/set/delete), persisting across 'tries' of a test."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any, **_: Any) -> None:
        self.data[key] = json.loads(json.dumps(value))

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def upload_operator(conn_id: str, path, key: str, **kwargs: Any):
    """The operator as the integration tests build it: 5 MiB parts, no progress lines, the key in
    ``BUCKET`` unless given as an s3:// URL or with ``bucket=``; ``kwargs`` override or add arguments."""
    from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator

    kwargs.setdefault("part_size", 5 * 1024 * 1024)
    kwargs.setdefault("progress_interval", 0)
    target = key if key.startswith("s3://") or "bucket" in kwargs else f"s3://{BUCKET}/{key}"
    return MultipartUploadOperator(task_id="upload", file=str(path), key=target, aws_conn_id=conn_id, **kwargs)
