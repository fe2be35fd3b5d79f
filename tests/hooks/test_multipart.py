"""S3MultipartHook: the connection's settings under our tuning, and the janitor usable without an operator."""

from __future__ import annotations

import threading

import pytest

from airflow_mpu_provider import get_provider_info
from airflow_mpu_provider.hooks.multipart import UPLOAD_RETRIES, S3MultipartHook
from airflow_mpu_provider.multipart import stale
from airflow_mpu_provider.multipart.errors import UploadCancelledError
from tests.conftest import incomplete_uploads

CONNECTION = (
    '{"conn_type": "aws", "extra": {"region_name": "eu-west-1", "endpoint_url": "http://127.0.0.1:9", '
    '"config_kwargs": {"connect_timeout": 7, "max_pool_connections": 2, "retries": {"max_attempts": 3}}}}'
)


@pytest.fixture
def hook(monkeypatch) -> S3MultipartHook:
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", CONNECTION)
    return S3MultipartHook()


def test_the_hook_is_an_s3hook_and_is_registered_with_the_provider():
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    assert issubclass(S3MultipartHook, S3Hook)
    modules = [m for entry in get_provider_info()["hooks"] for m in entry["python-modules"]]
    assert "airflow_mpu_provider.hooks.multipart" in modules


def test_upload_client_keeps_the_connection_settings_but_never_a_pool_too_small_for_the_workers(hook):
    client = hook.get_upload_client(workers=16)
    config = client.meta.config
    assert (client.meta.endpoint_url, client.meta.region_name) == ("http://127.0.0.1:9", "eu-west-1")
    assert config.connect_timeout == 7  # the connection's config_kwargs win...
    assert config.retries["total_max_attempts"] == 4  # 3 retries
    assert config.max_pool_connections >= 17  # ...except a pool the parts would queue for
    assert config.tcp_keepalive is True


def test_upload_client_defaults_apply_where_the_connection_says_nothing(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", '{"conn_type": "aws", "extra": {"region_name": "eu-west-1"}}')
    config = S3MultipartHook().get_upload_client(workers=8).meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": UPLOAD_RETRIES + 1}
    assert config.max_pool_connections == 12


def test_without_a_checksum_algorithm_botocore_adds_none_either(hook):
    assert hook.get_upload_client(checksum_algorithm=None).meta.config.request_checksum_calculation == "when_required"
    default = hook.get_upload_client().meta.config.request_checksum_calculation
    assert default != "when_required" or default is None


def test_cancel_stops_a_running_sweep_before_its_next_upload(mock_s3, monkeypatch):
    """A @task calling the hook can hand ``hook.cancel`` to its own signal handling."""
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 6, 1, tzinfo=UTC)
    monkeypatch.setattr(stale, "_utcnow", lambda: now)
    keys = ["old/a", "old/b"]
    for key in keys:
        mock_s3.create_multipart_upload(Bucket="test-bucket", Key=key)  # moto dates them 2010: stale
    hook = S3MultipartHook(aws_conn_id=None)
    monkeypatch.setattr(S3MultipartHook, "get_conn", lambda self: mock_s3)
    first_abort_done = threading.Event()
    original = mock_s3.abort_multipart_upload

    def abort_then_cancel(**kwargs):
        response = original(**kwargs)
        if not first_abort_done.is_set():
            first_abort_done.set()
            hook.cancel()  # as a signal handler would, while the sweep is between uploads
        return response

    monkeypatch.setattr(mock_s3, "abort_multipart_upload", abort_then_cancel)
    with pytest.raises(UploadCancelledError, match="after handling 1 of 2"):
        hook.abort_stale_uploads("test-bucket", "old/", timedelta(days=1))
    assert len(incomplete_uploads(mock_s3, "test-bucket", "old/")) == 1
    for upload in incomplete_uploads(mock_s3, "test-bucket", "old/"):
        original(Bucket="test-bucket", Key=upload["Key"], UploadId=upload["UploadId"])
