"""The fault matrix: a flaky network, throttling, a broken server, a changing source.

Every fault is injected by the proxy between the operator and moto's server (seeded, bounded in
count), and every case ends with either a byte-identical object or a failed task that left no
incomplete upload and no object behind.
"""

from __future__ import annotations

import threading

import pytest

from airflow_mpu_provider.multipart.errors import SourceChangedError
from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator
from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.integration.conftest import BUCKET
from tests.support.s3_proxy import Fault

pytestmark = pytest.mark.integration


def upload(conn_id: str, path, key: str, **kwargs) -> dict:
    kwargs.setdefault("part_size", 5 * MiB)
    kwargs.setdefault("concurrency", 4)
    op = MultipartUploadOperator(
        task_id="upload", file=str(path), key=f"s3://{BUCKET}/{key}", aws_conn_id=conn_id, progress_interval=0, **kwargs
    )
    return op.execute({})


def assert_arrived(s3, key: str, path) -> None:
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert incomplete_uploads(s3, BUCKET) == []


def assert_nothing_left(s3, key: str) -> None:
    assert incomplete_uploads(s3, BUCKET) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=key)


@pytest.mark.parametrize(("status", "code"), [(500, "InternalError"), (503, "SlowDown")])
def test_ten_percent_of_parts_answered_with_server_errors_still_completes(
    connection, proxy, s3, tmp_path, status, code
):
    path = make_file(tmp_path / "f", 100 * MiB)
    fault = Fault(kind="UploadPart", action="error", status=status, code=code, probability=0.1, times=8)
    proxy.add_fault(fault)
    upload(connection(), path, f"faults/errors-{status}.bin")
    assert proxy.injections(fault) >= 1
    assert proxy.count("UploadPart", status=200) == 20
    assert_arrived(s3, f"faults/errors-{status}.bin", path)


def test_connections_reset_in_the_middle_of_part_bodies_still_completes(connection, proxy, s3, tmp_path):
    path = make_file(tmp_path / "f", 60 * MiB)
    fault = Fault(kind="UploadPart", action="reset", probability=0.3, times=4, after_bytes=1 * MiB)
    proxy.add_fault(fault)
    upload(connection(), path, "faults/resets.bin")
    assert proxy.injections(fault) >= 1
    assert_arrived(s3, "faults/resets.bin", path)


def test_complete_failing_once_with_a_500_still_completes(connection, proxy, s3, tmp_path):
    path = make_file(tmp_path / "f", 12 * MiB)
    fault = Fault(kind="CompleteMultipartUpload", action="error", status=500, times=1)
    proxy.add_fault(fault)
    result = upload(connection(), path, "faults/complete-500.bin")
    assert proxy.injections(fault) == 1
    assert proxy.count("CompleteMultipartUpload") == 2
    assert result["etag"].endswith("-3")
    assert_arrived(s3, "faults/complete-500.bin", path)


def test_complete_answering_200_with_an_error_inside_is_not_taken_for_success(connection, proxy, s3, tmp_path):
    path = make_file(tmp_path / "f", 12 * MiB)
    fault = Fault(kind="CompleteMultipartUpload", action="error_200", times=1)
    proxy.add_fault(fault)
    result = upload(connection(), path, "faults/complete-200-error.bin")
    assert proxy.injections(fault) == 1
    assert proxy.count("CompleteMultipartUpload") == 2  # botocore saw the error inside and retried
    assert result["size"] == 12 * MiB
    assert_arrived(s3, "faults/complete-200-error.bin", path)


def test_server_down_for_a_few_seconds_mid_upload_completes_within_the_retry_budget(connection, proxy, s3, tmp_path):
    path = make_file(tmp_path / "f", 60 * MiB)
    outage: list[threading.Timer] = []

    def go_down_after_four_parts(record):
        if record.kind == "UploadPart" and not outage and proxy.count("UploadPart", status=200) >= 4:
            proxy.set_down(True)
            timer = threading.Timer(3.0, proxy.set_down, args=(False,))
            outage.append(timer)
            timer.start()

    proxy.on_request = go_down_after_four_parts
    upload(connection(), path, "faults/outage.bin")
    assert outage, "the outage never happened"
    outage[0].join()
    assert_arrived(s3, "faults/outage.bin", path)


@pytest.mark.parametrize("change", ["deleted", "truncated", "appended"])
def test_source_changed_mid_upload_fails_and_leaves_nothing(connection, proxy, s3, tmp_path, change):
    path = make_file(tmp_path / "f", 40 * MiB)
    key = f"faults/source-{change}.bin"
    proxy.add_fault(Fault(kind="UploadPart", action="delay", delay=0.05))

    def change_after_two_parts(record):
        if record.kind == "UploadPart" and proxy.count("UploadPart", status=200) == 2 and path.exists():
            if change == "deleted":
                path.unlink()
            elif change == "truncated":
                with path.open("r+b") as f:
                    f.truncate(7 * MiB)
            else:
                with path.open("ab") as f:
                    f.write(b"more")

    proxy.on_request = change_after_two_parts
    with pytest.raises(SourceChangedError):
        upload(connection(), path, key, concurrency=1)
    assert_nothing_left(s3, key)
