"""Killing an upload: a cancelled part is never retried, real network errors still are, and on_kill
ends execute() with the upload gone within the supervisor's grace period, even on a slow link.

Everything goes over HTTP through the proxy, whose ``throttle`` fault plays the slow link.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError

from airflow_mpu_provider.multipart.errors import UploadCancelledError
from airflow_mpu_provider.multipart.integrity import digest_part
from airflow_mpu_provider.multipart.upload import MultipartUpload
from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator
from tests.conftest import MiB, incomplete_uploads, make_file
from tests.integration.conftest import BUCKET, FakeTaskInstance
from tests.support.local_airflow import ACCESS_KEY, REGION, SECRET_KEY
from tests.support.s3_proxy import Fault, wait_until

pytestmark = pytest.mark.integration


def ten_attempts_client(proxy) -> Any:
    """The operator's retry settings (standard mode, 10 attempts), straight to the proxy."""
    return boto3.client(
        "s3",
        endpoint_url=proxy.url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(retries={"mode": "standard", "max_attempts": 10}, read_timeout=120),
    )


def send_part_in_thread(upload: MultipartUpload, data: bytes, cancel: threading.Event) -> tuple[threading.Thread, list]:
    outcome: list = []

    def send() -> None:
        digest = digest_part(1, data, algorithm="CRC32C", with_md5=True)
        try:
            outcome.append(upload.put_part(1, data, digest, cancel=cancel))
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=send)
    thread.start()
    return thread, outcome


def test_a_part_cancelled_mid_body_fails_at_once_instead_of_being_retried(proxy, s3):
    key = "kill/cancelled-part.bin"
    proxy.add_fault(Fault("UploadPart", "throttle", rate=256 * 1024))  # 8 MiB would take 32 s
    upload = MultipartUpload(ten_attempts_client(proxy), BUCKET, key)
    upload.create()
    cancel = threading.Event()
    try:
        thread, outcome = send_part_in_thread(upload, b"p" * (8 * MiB), cancel)
        assert proxy.wait_in_flight("UploadPart", 1, timeout=60)
        cancel.set()
        thread.join(60)
        assert not thread.is_alive(), "the cancelled part is still being sent (retried?)"
        assert len(outcome) == 1 and isinstance(outcome[0], UploadCancelledError), outcome
        assert wait_until(lambda: proxy.in_flight("UploadPart") == 0, timeout=30)
        assert proxy.count("UploadPart") == 1  # one attempt: botocore did not retry it
        assert [r.status for r in proxy.requests() if r.kind == "UploadPart"] == [0]
    finally:
        upload.abort()


def test_a_network_error_on_a_cancelled_part_is_not_retried_either(proxy, s3):
    """The connection breaks (not our read) while the part is already cancelled: no retry."""
    key = "kill/reset-after-cancel.bin"
    cancel = threading.Event()
    data = b"r" * (64 * 1024)  # small: the whole body is sent before the reset, so no read() raises
    proxy.add_fault(Fault("UploadPart", "reset", after_bytes=len(data)))
    proxy.on_request = lambda record: cancel.set() if record.kind == "UploadPart" else None  # just before the RST
    upload = MultipartUpload(ten_attempts_client(proxy), BUCKET, key)
    upload.create()
    try:
        thread, outcome = send_part_in_thread(upload, data, cancel)
        thread.join(60)
        assert isinstance(outcome[0], UploadCancelledError), outcome
        assert isinstance(outcome[0].__cause__, BotoCoreError)  # the broken connection, not our read
        assert proxy.count("UploadPart") == 1
    finally:
        upload.abort()


def test_real_network_errors_keep_the_whole_retry_budget(proxy, s3):
    """Not a retry count of 1 for everyone: resets of a part that is not cancelled are retried."""
    key = "kill/resets-retried.bin"
    fault = Fault("UploadPart", "reset", times=5, after_bytes=1 * MiB)
    proxy.add_fault(fault)
    upload = MultipartUpload(ten_attempts_client(proxy), BUCKET, key)
    upload.create()
    try:
        thread, outcome = send_part_in_thread(upload, b"n" * (6 * MiB), threading.Event())  # never set
        thread.join(120)
        assert isinstance(outcome[0], dict) and outcome[0]["PartNumber"] == 1, outcome
        assert proxy.injections(fault) == 5
        assert [r.status for r in proxy.requests() if r.kind == "UploadPart"] == [0, 0, 0, 0, 0, 200]
    finally:
        upload.abort()
