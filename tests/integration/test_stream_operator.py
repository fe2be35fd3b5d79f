"""MultipartUploadOperator streaming a command's output, over HTTP: ownership of stream tries, bash, timeouts."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest

from airflow_mpu_provider.multipart.errors import CommandFailedError, InvalidUploadRequest
from airflow_mpu_provider.multipart.upload import MultipartUpload
from airflow_mpu_provider.operators.multipart_upload import STREAM_STATE_KEY, MultipartUploadOperator
from airflow_mpu_provider.version_compat import AIRFLOW_V_3_3_PLUS
from tests.conftest import MiB, incomplete_uploads
from tests.integration.conftest import BUCKET, FakeStateStore, FakeTaskInstance
from tests.support.seed import seed_crashed_upload

pytestmark = pytest.mark.integration

#: 12 MiB of known bytes on stdout: three 5 MiB parts, the last one short.
WRITE_12_MIB = "head -c 12582912 /dev/zero | tr '\\0' 'a'"


def streaming(conn_id: str, key: str, command: str = WRITE_12_MIB, **kwargs) -> MultipartUploadOperator:
    kwargs.setdefault("part_size", 5 * MiB)
    kwargs.setdefault("progress_interval", 0)
    kwargs.setdefault("replace", True)
    return MultipartUploadOperator(
        task_id="stream", command=command, key=f"s3://{BUCKET}/{key}", aws_conn_id=conn_id, **kwargs
    )


class Broken(Exception):
    pass


class FailingStateStore(FakeStateStore):
    def set(self, key, value, **kwargs):
        raise Broken("task_state_store: execution API answered 503")


def test_success_records_the_upload_while_it_runs_then_clears_it(connection, proxy, s3):
    key = "it/stream-ok.bin"
    store = FakeStateStore()
    seen = []
    ti = FakeTaskInstance(on_push=lambda: seen.append((dict(store.data), proxy.count("UploadPart"))))
    result = streaming(connection(), key, max_buffer_bytes=12 * MiB).execute({"ti": ti, "task_state_store": store})
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(b"a" * 12 * MiB).digest()
    if AIRFLOW_V_3_3_PLUS:  # recorded before the first part went out (XCom comes after the record)
        record = {"bucket": BUCKET, "key": key, "upload_id": result["upload_id"]}
        assert seen[0] == ({STREAM_STATE_KEY: record}, 0)
    assert store.data == {}  # completed: nothing for a next try
    assert 0 < result["peak_buffer_bytes"] <= 12 * MiB  # the cap holds, as the task's return value says
    assert incomplete_uploads(s3, BUCKET, key) == []
    s3.delete_object(Bucket=BUCKET, Key=key)


@pytest.mark.parametrize("what_fails", ["xcom", "task_state_store"])
def test_recording_the_upload_id_fails_on_the_last_try_the_upload_is_aborted(connection, proxy, s3, what_fails):
    if what_fails == "task_state_store" and not AIRFLOW_V_3_3_PLUS:
        pytest.skip("Airflow < 3.3 has no task_state_store: nothing is recorded there")
    key = f"it/stream-record-fails-{what_fails}.bin"

    def xcom_down():
        raise Broken("XCom: execution API answered 503")

    ti = FakeTaskInstance(try_number=1, max_tries=0, on_push=xcom_down if what_fails == "xcom" else None)
    store = FailingStateStore() if what_fails == "task_state_store" else FakeStateStore()
    with pytest.raises(Broken):
        streaming(connection(), key, retries=0).execute({"ti": ti, "task_state_store": store})
    assert proxy.count("CreateMultipartUpload", status=200) == 1
    assert proxy.count("AbortMultipartUpload") >= 1
    assert incomplete_uploads(s3, BUCKET, key) == []
    assert store.data == {}  # aborted and gone: no record left either
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=key)


def test_a_failing_command_aborts_and_clears_the_record(connection, proxy, s3):
    key = "it/stream-fails.bin"
    store = FakeStateStore()
    op = streaming(connection(), key, command="head -c 7000000 /dev/zero; exit 3", retries=2)
    with pytest.raises(CommandFailedError, match="status 3"):
        op.execute({"ti": FakeTaskInstance(try_number=1, max_tries=2), "task_state_store": store})
    assert proxy.count("AbortMultipartUpload") >= 1
    assert incomplete_uploads(s3, BUCKET, key) == []
    assert store.data == {}


def test_the_next_try_aborts_the_upload_of_a_try_that_died(connection, proxy, s3):
    """What SIGKILL leaves behind, built by hand: a record and an upload with a part. (The real kill
    through Airflow is tests/e2e/test_stream_kills.py.)"""
    key = "it/stream-dead-try.bin"
    dead_id = seed_crashed_upload(s3, BUCKET, key, b"x" * 5 * MiB)
    store = FakeStateStore()
    store.set(STREAM_STATE_KEY, {"bucket": BUCKET, "key": key, "upload_id": dead_id})
    ti = FakeTaskInstance(try_number=2, max_tries=1)
    result = streaming(connection(), key).execute({"ti": ti, "task_state_store": store})
    assert result["upload_id"] != dead_id
    if AIRFLOW_V_3_3_PLUS:
        assert proxy.count("AbortMultipartUpload") >= 1
        assert incomplete_uploads(s3, BUCKET, key) == []
    else:  # no task_state_store: the dead try's upload is left to the janitor or a lifecycle rule
        assert [u["UploadId"] for u in incomplete_uploads(s3, BUCKET, key)] == [dead_id]
        MultipartUpload(s3, BUCKET, key, upload_id=dead_id).abort()
    assert store.data == ({} if AIRFLOW_V_3_3_PLUS else {STREAM_STATE_KEY: store.data[STREAM_STATE_KEY]})
    s3.delete_object(Bucket=BUCKET, Key=key)


def test_no_bash_on_path_fails_before_any_request(connection, proxy, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no bash, no sh
    op = streaming(connection(), "it/stream-no-bash.bin", command="pg_dump app | gzip")
    with pytest.raises(InvalidUploadRequest, match=r"bash was not found on PATH.*pipefail"):
        op.execute({"ti": FakeTaskInstance()})
    assert proxy.requests() == []  # nothing created, nothing even asked


def test_command_timeout_as_a_timedelta_kills_the_command_and_aborts(connection, proxy, s3):
    key = "it/stream-timeout.bin"
    op = streaming(connection(), key, command="sleep 3; echo finished", command_timeout=timedelta(seconds=1))
    with pytest.raises(CommandFailedError, match="timed out after 1 s"):
        op.execute({"ti": FakeTaskInstance()})
    assert incomplete_uploads(s3, BUCKET, key) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=key)


def test_output_cut_short_by_command_timeout_fails_and_aborts_even_when_bash_exited_0(connection, proxy, s3):
    """Issue #20: `... & exit 0` exits 0 at once; the timeout kills the writer, the stream ends early, and
    the truncated output was completed as the object."""
    key = "it/stream-timeout-background.bin"
    command = "(head -c 300000 /dev/zero; sleep 30; head -c 300000 /dev/zero) & exit 0"
    op = streaming(connection(), key, command=command, command_timeout=1)
    with pytest.raises(CommandFailedError, match="timed out after 1 s and was killed; its output was cut short"):
        op.execute({"ti": FakeTaskInstance()})
    assert proxy.count("CompleteMultipartUpload") == 0
    assert proxy.count("AbortMultipartUpload") >= 1
    assert incomplete_uploads(s3, BUCKET, key) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=key)


@pytest.mark.skipif(not AIRFLOW_V_3_3_PLUS, reason="Airflow < 3.3 has no task_state_store")
def test_a_record_that_cannot_be_cleared_does_not_fail_a_completed_upload(connection, s3):
    key = "it/stream-clear-fails.bin"

    class UndeletableStore(FakeStateStore):
        def delete(self, key):
            raise Broken("task_state_store: execution API answered 503")

    store = UndeletableStore()
    result = streaming(connection(), key).execute({"ti": FakeTaskInstance(), "task_state_store": store})
    assert result["size"] == 12 * MiB
    assert store.data[STREAM_STATE_KEY]["upload_id"] == result["upload_id"]  # stale, harmless: it is complete
    assert incomplete_uploads(s3, BUCKET, key) == []
    s3.delete_object(Bucket=BUCKET, Key=key)


@pytest.mark.skipif(not AIRFLOW_V_3_3_PLUS, reason="Airflow < 3.3 has no task_state_store")
def test_an_abort_that_fails_keeps_the_record_for_the_next_try(connection, proxy, s3):
    from tests.support.s3_proxy import Fault

    key = "it/stream-abort-denied.bin"
    store = FakeStateStore()
    proxy.add_fault(Fault(kind="AbortMultipartUpload", action="error", status=403, code="AccessDenied"))
    op = streaming(connection(), key, command="head -c 7000000 /dev/zero; exit 3")
    with pytest.raises(CommandFailedError, match="status 3"):
        op.execute({"ti": FakeTaskInstance(), "task_state_store": store})
    left = incomplete_uploads(s3, BUCKET, key)
    assert [u["UploadId"] for u in left] == [store.data[STREAM_STATE_KEY]["upload_id"]]  # recorded: not lost
    proxy.clear_faults()
    retry = streaming(connection(), key)
    retry.execute({"ti": FakeTaskInstance(try_number=2, max_tries=1), "task_state_store": store})
    assert incomplete_uploads(s3, BUCKET, key) == []  # the next try aborted it
    assert store.data == {}
    s3.delete_object(Bucket=BUCKET, Key=key)
