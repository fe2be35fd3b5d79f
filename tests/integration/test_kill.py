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

from airflow_mpu_provider.multipart.checksums.digests import digest_part
from airflow_mpu_provider.multipart.errors import UploadCancelledError
from airflow_mpu_provider.multipart.parts.record import PartRecord
from airflow_mpu_provider.multipart.upload import MultipartUpload
from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator
from tests.conftest import MiB, incomplete_uploads, make_file
from tests.integration.conftest import BUCKET, FakeTaskInstance
from tests.support.local_airflow import ACCESS_KEY, REGION, SECRET_KEY
from tests.support.s3_proxy import Fault, wait_until

pytestmark = pytest.mark.integration


#: As over HTTPS in production: the part body is not read for signing. Over plain HTTP botocore would
#: otherwise read (and so re-check) the cancelled body while signing each retry, which hides the retries.
UNSIGNED_PAYLOAD = {"payload_signing_enabled": False}


def ten_attempts_client(proxy, mode: str = "standard") -> Any:
    """The operator's retry settings (standard mode, max_attempts=10), straight to the proxy."""
    return boto3.client(
        "s3",
        endpoint_url=proxy.url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(retries={"mode": mode, "max_attempts": 10}, read_timeout=120, s3=UNSIGNED_PAYLOAD),
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


@pytest.mark.parametrize("mode", ["standard", "adaptive", "legacy"])  # a connection may choose any
def test_a_part_cancelled_mid_body_fails_at_once_instead_of_being_retried(proxy, s3, mode):
    key = f"kill/cancelled-part-{mode}.bin"
    proxy.add_fault(Fault("UploadPart", "throttle", rate=256 * 1024))  # 32 MiB: 128 s, more than buffers hold
    upload = MultipartUpload(ten_attempts_client(proxy, mode), BUCKET, key)
    upload.create()
    cancel = threading.Event()
    try:
        thread, outcome = send_part_in_thread(upload, b"p" * (32 * MiB), cancel)
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
        assert isinstance(outcome[0], PartRecord) and outcome[0].number == 1, outcome
        assert proxy.injections(fault) == 5
        assert [r.status for r in proxy.requests() if r.kind == "UploadPart"] == [0, 0, 0, 0, 0, 200]
    finally:
        upload.abort()


#: The slow link of the kill-latency test: each part's body trickles in at 1 MiB/s (8 MiB/s for 8 parts),
#: so a 64 MiB part would take a minute and all 8 are surely in flight when the task is killed.
SLOW_LINK = 1 * MiB
#: What the test asserts: far above the <= 5 s the issue asks for (a benchmark figure, see the print),
#: and far below the 25-110 s of botocore retrying the cancelled parts.
GENEROUS_BOUND = 30


@pytest.mark.parametrize("parts", [8, 1])
def test_on_kill_with_64_mib_parts_in_flight_on_a_slow_link_fails_execute_and_aborts_quickly(
    connection, proxy, s3, tmp_path, parts
):
    """8 parts: the issue's case. 1 part: botocore's retry quota, shared by the client, does not cut
    the retries of a cancelled part short as it does when 8 of them drain it together."""
    key = f"kill/latency-{parts}.bin"
    path = make_file(tmp_path / "dump.sql", parts * 64 * MiB)  # exactly ``parts`` parts, all in flight
    proxy.add_fault(Fault("UploadPart", "throttle", rate=SLOW_LINK))
    operator = MultipartUploadOperator(
        task_id="upload",
        file=str(path),
        key=f"s3://{BUCKET}/{key}",
        aws_conn_id=connection(config_kwargs={"s3": UNSIGNED_PAYLOAD}),
        part_size=64 * MiB,
        concurrency=parts,
        progress_interval=0,
    )
    outcome: list = []
    raised_at: list[float] = []

    def execute() -> None:
        try:
            outcome.append(operator.execute({"ti": FakeTaskInstance()}))
        except BaseException as e:
            outcome.append(e)
        raised_at.append(time.monotonic())

    runner = threading.Thread(target=execute, name="execute")
    runner.start()
    try:
        assert proxy.wait_in_flight("UploadPart", parts, timeout=300), f"{parts} parts never were in flight at once"
        killed_at = time.monotonic()
        operator.on_kill()
        runner.join(300)
        assert not runner.is_alive(), "execute() still runs 300 s after on_kill"
        assert wait_until(lambda: incomplete_uploads(s3, BUCKET, key) == [], timeout=300, interval=0.05)
        gone_at = time.monotonic()
    finally:
        proxy.clear_faults()
        runner.join(300)
    latency = max(raised_at[0], gone_at) - killed_at
    print(
        f"\nkill latency, {parts} x 64 MiB in flight: {latency:.2f} s from on_kill to execute() raising "
        "and the upload being gone"
    )
    assert isinstance(outcome[0], UploadCancelledError), outcome
    assert latency < GENEROUS_BOUND
    assert wait_until(lambda: proxy.in_flight("UploadPart") == 0, timeout=60)
    assert proxy.count("UploadPart") == parts  # each part was cut off once and never retried
    assert proxy.count("UploadPart", status=200) == 0
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=key)
