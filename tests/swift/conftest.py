"""Swift harness: the provider against OpenStack Swift's S3 API (``s3api``), a second real store beside moto.

The session's Swift (``swift`` in ``tests/conftest.py``) is reached, as users reach a store, through an
Airflow connection (``AIRFLOW_CONN_MPU_SWIFT``) whose ``endpoint_url`` is the counting, fault-injecting
proxy (``tests/support/s3_proxy.py``) in front of it: what was sent is measured on the wire. A failed
test shows what the Swift daemons logged while it ran.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import SWIFT_BUCKET
from tests.support import swift_server

BUCKET = SWIFT_BUCKET
CONN_ID = "mpu_swift"

#: The two ways a user runs against Swift: the defaults (CRC32C and FULL_OBJECT asked for; Swift keeps no
#: checksums, so Complete carries only PartNumber and ETag and the object is verified by its ETag), and
#: checksums off (Content-MD5 only).
CHECKSUMS = [
    pytest.param({}, id="defaults"),
    pytest.param({"checksum_algorithm": None}, id="md5-only"),
]


@pytest.fixture
def swift_proxy(swift_endpoint, swift_s3) -> Iterator[object]:
    from tests.support.s3_proxy import S3Proxy

    with S3Proxy(swift_endpoint, seed=1818) as p:
        yield p


@pytest.fixture
def swift_connection(monkeypatch, swift_proxy) -> str:
    """The Airflow connection ``mpu_swift`` to Swift through the proxy; returns its id."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", swift_server.aws_connection(swift_proxy.url))
    return CONN_ID


@pytest.fixture
def hook(swift_connection):
    from airflow_mpu_provider.hooks.multipart import S3MultipartHook

    return S3MultipartHook(aws_conn_id=swift_connection)


@pytest.fixture
def clean_key(swift_s3) -> Iterator[Callable[[str], str]]:
    """Keys a test uses: whatever it leaves (object, incomplete uploads) is removed afterwards."""
    keys: list[str] = []

    def use(key: str) -> str:
        keys.append(key)
        return key

    yield use
    for key in keys:
        for upload in swift_s3.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", []):
            if upload["Key"] == key:
                swift_s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload["UploadId"])
        swift_s3.delete_object(Bucket=BUCKET, Key=key)


def wait_until_swift_shows_it_past(s3, key: str, timeout: float = 30) -> None:
    """Swift's s3api reports an upload's ``Initiated`` and its parts' ``LastModified`` rounded *up* to the
    next whole second, so for up to a second a new upload looks initiated in the future: not yet older
    than ``adopt_quiet_after=0`` or the janitor's ``older_than=0``. Poll Swift (bounded) until every
    upload of ``key`` and its parts are reported in the past."""
    deadline = time.monotonic() + timeout
    while True:
        stamps = []
        for upload in s3.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", []):
            if upload["Key"] == key:
                stamps.append(upload["Initiated"])
                parts = s3.list_parts(Bucket=BUCKET, Key=key, UploadId=upload["UploadId"]).get("Parts", [])
                stamps.extend(part["LastModified"] for part in parts)
        if stamps and max(stamps) < datetime.now(UTC):
            return
        assert time.monotonic() < deadline, f"Swift still shows an upload of {key} in the future: {stamps}"
        time.sleep(0.1)


@pytest.fixture(autouse=True)
def _swift_logs_on_failure(request, swift) -> Iterator[None]:
    """Remember where each daemon's log was when the test started; a failed test shows what came after."""
    start = {log: log.stat().st_size for log in Path(swift.root).glob("*.log")}
    request.node.swift_logs_from = start
    yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    start = getattr(item, "swift_logs_from", None)
    if start and report.failed:
        for log, offset in start.items():
            with log.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            if text.strip():
                report.sections.append((f"Swift {log.name} during the test", text[-3000:]))
    return report
