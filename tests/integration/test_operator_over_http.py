"""MultipartUploadOperator against a real S3 endpoint over HTTP, configured by an Airflow connection."""

from __future__ import annotations

import logging
import os

import pytest

from airflow_mpu_provider.multipart.errors import InvalidUploadRequest, S3UploadError
from airflow_mpu_provider.operators.multipart_upload import STATE_KEY, MultipartUploadOperator
from airflow_mpu_provider.version_compat import AIRFLOW_V_3_3_PLUS
from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.integration.conftest import BUCKET, FakeStateStore, FakeTaskInstance, upload_operator
from tests.support.local_airflow import SECRET_KEY
from tests.support.s3_proxy import Fault

pytestmark = pytest.mark.integration


operator = upload_operator


def test_uploads_through_the_connection_and_pushes_the_upload_id_before_any_part(connection, proxy, s3, tmp_path):
    path = make_file(tmp_path / "dump", 23 * MiB)
    parts_sent_at_push = []
    ti = FakeTaskInstance(on_push=lambda: parts_sent_at_push.append(proxy.count("UploadPart")))
    op = operator(connection(), path, f"s3://{BUCKET}/it/basic.bin", concurrency=4)
    result = op.execute({"ti": ti})
    assert sha256_object(s3, BUCKET, "it/basic.bin") == sha256_file(path)
    assert parts_sent_at_push[0] == 0  # XCom had the UploadId before the first part went out
    assert ti.xcom["upload_id"] == result["upload_id"]
    assert ti.xcom["multipart_upload"] == {"bucket": BUCKET, "key": "it/basic.bin", "upload_id": result["upload_id"]}
    assert {k: result[k] for k in ("bucket", "key", "size", "parts", "parts_sent", "parts_resumed")} == {
        "bucket": BUCKET,
        "key": "it/basic.bin",
        "size": 23 * MiB,
        "parts": 5,
        "parts_sent": 5,
        "parts_resumed": 0,
    }
    assert result["seconds"] > 0 and result["etag"].endswith("-5")
    assert proxy.count("UploadPart", status=200) == 5
    assert incomplete_uploads(s3, BUCKET) == []


def test_bucket_argument_and_relative_key(connection, s3, tmp_path):
    path = make_file(tmp_path / "f", 1234)
    operator(connection(), path, "it/relative.bin", bucket=BUCKET).execute({})
    assert sha256_object(s3, BUCKET, "it/relative.bin") == sha256_file(path)


def test_zero_byte_file_becomes_a_zero_byte_object(connection, s3, tmp_path):
    path = tmp_path / "empty"
    path.touch()
    result = operator(connection(), path, f"s3://{BUCKET}/it/empty").execute({})
    assert result["size"] == 0 and result["parts"] == 1
    assert s3.head_object(Bucket=BUCKET, Key="it/empty")["ContentLength"] == 0


def test_object_arguments_reach_s3(connection, s3, tmp_path):
    path = make_file(tmp_path / "f", 6 * MiB)
    operator(
        connection(),
        path,
        f"s3://{BUCKET}/it/args.bin",
        content_type="application/sql",
        metadata={"source": "pg_dump"},
        tags={"retention": "90d"},
        storage_class="STANDARD_IA",
        encrypt=True,
    ).execute({})
    head = s3.head_object(Bucket=BUCKET, Key="it/args.bin")
    assert head["ContentType"] == "application/sql"
    assert head["Metadata"] == {"source": "pg_dump"}
    assert head["StorageClass"] == "STANDARD_IA"
    assert head["ServerSideEncryption"] == "AES256"
    tags = s3.get_object_tagging(Bucket=BUCKET, Key="it/args.bin")["TagSet"]
    assert tags == [{"Key": "retention", "Value": "90d"}]


def test_md5_only_mode_for_stores_that_reject_checksums(connection, proxy, s3, tmp_path):
    path = make_file(tmp_path / "f", 11 * MiB)
    operator(connection(), path, f"s3://{BUCKET}/it/md5.bin", checksum_algorithm=None).execute({})
    assert sha256_object(s3, BUCKET, "it/md5.bin") == sha256_file(path)
    parts = [r for r in proxy.requests() if r.kind == "UploadPart"]
    assert all("content-md5" in {k.lower() for k in r.headers} for r in parts)
    sent = {k.lower() for r in parts for k in r.headers}
    assert not any(k.startswith("x-amz-checksum-") or k == "x-amz-sdk-checksum-algorithm" for k in sent), sent


def test_the_connections_own_config_kwargs_win(connection, proxy, s3, tmp_path):
    """config_kwargs in the connection keep working: here, no retries, so one 500 fails the task."""
    conn_id = connection(config_kwargs={"retries": {"mode": "standard", "max_attempts": 0}})
    proxy.add_fault(Fault(kind="UploadPart", action="error", status=500, times=1))
    path = make_file(tmp_path / "f", 11 * MiB)
    with pytest.raises(S3UploadError, match="UploadPart failed.*InternalError"):
        operator(conn_id, path, f"s3://{BUCKET}/it/no-retries.bin", concurrency=1).execute({})
    assert incomplete_uploads(s3, BUCKET) == []  # no retry follows: aborted


def test_replace_false_refuses_an_existing_key_before_creating_anything(connection, proxy, s3, tmp_path):
    s3.put_object(Bucket=BUCKET, Key="it/exists.bin", Body=b"keep me")
    path = make_file(tmp_path / "f", 10)
    with pytest.raises(S3UploadError, match="already exists; set replace=True"):
        operator(connection(), path, f"s3://{BUCKET}/it/exists.bin").execute({})
    assert proxy.count("CreateMultipartUpload") == 0
    assert s3.get_object(Bucket=BUCKET, Key="it/exists.bin")["Body"].read() == b"keep me"
    operator(connection(), path, f"s3://{BUCKET}/it/exists.bin", replace=True).execute({})
    assert s3.get_object(Bucket=BUCKET, Key="it/exists.bin")["Body"].read() == path.read_bytes()


def _sparse(path, size):
    with path.open("wb") as f:
        f.truncate(size)
    return path


@pytest.mark.parametrize(
    ("case", "kwargs", "message"),
    [
        ("missing file", {"file": "/nonexistent/dump.sql"}, "does not exist"),
        ("directory", {"file": "{tmp}"}, "is a directory"),
        ("empty key", {"key": ""}, "key is empty"),
        ("key over 1024 bytes", {"key": f"s3://{BUCKET}/" + "k" * 1025}, "at most 1,024"),
        ("no bucket", {"key": "just/a/key"}, "bucket"),
        ("part size too small", {"part_size": 5 * MiB - 1}, "below S3's minimum"),
        ("part size too large", {"part_size": 5 * 1024 * MiB + 1}, "above S3's maximum"),
        ("too many parts", {"part_size": 5 * MiB, "file": "{sparse}"}, "more than S3's 10,000"),
        ("unknown checksum", {"checksum_algorithm": "adler32"}, "not supported"),
    ],
)
def test_bad_input_fails_before_any_s3_request(connection, proxy, s3, tmp_path, case, kwargs, message):
    path = make_file(tmp_path / "f", 10)
    sparse = _sparse(tmp_path / "sparse", 10_001 * 5 * MiB)  # 48.8 GiB of holes: no disk used
    args = {"file": str(path), "key": f"s3://{BUCKET}/it/bad.bin", "part_size": None}
    args.update({k: v.format(tmp=tmp_path, sparse=sparse) if isinstance(v, str) else v for k, v in kwargs.items()})
    with pytest.raises(InvalidUploadRequest, match=message):  # at construction or at execute
        MultipartUploadOperator(task_id="bad", aws_conn_id=connection(), **args).execute({})
    assert proxy.requests() == []  # not one S3 call
    assert incomplete_uploads(s3, BUCKET) == []


def test_unreadable_file_fails_before_any_s3_request(connection, proxy, tmp_path, monkeypatch):
    path = make_file(tmp_path / "f", 10)
    real_open = os.open

    def deny(p, *args, **kwargs):
        if str(p) == str(path):
            raise PermissionError(13, "Permission denied")
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(InvalidUploadRequest, match="not readable"):
        operator(connection(), path, f"s3://{BUCKET}/it/unreadable").execute({})
    assert proxy.requests() == []


def test_nonexistent_bucket_is_a_clear_error_and_creates_nothing(connection, s3, tmp_path):
    path = make_file(tmp_path / "f", 10)
    with pytest.raises(S3UploadError, match="s3://no-such-bucket-xyz/k.*NoSuchBucket.*check the bucket name"):
        operator(connection(), path, "s3://no-such-bucket-xyz/k").execute({})


def test_unreachable_endpoint_is_a_clear_error(monkeypatch, tmp_path):
    from tests.support.local_airflow import aws_connection, free_port

    monkeypatch.setenv(
        "AIRFLOW_CONN_MPU_DOWN",
        aws_connection(
            f"http://127.0.0.1:{free_port()}",
            config_kwargs={"retries": {"mode": "standard", "max_attempts": 0}, "connect_timeout": 2},
        ),
    )
    path = make_file(tmp_path / "f", 10)
    with pytest.raises(Exception, match="Could not connect to the endpoint URL"):
        operator("mpu_down", path, f"s3://{BUCKET}/k").execute({})


def test_failure_with_a_retry_to_come_keeps_the_upload_and_the_retry_resumes_it(
    connection, proxy, s3, tmp_path, caplog, capsys
):
    path = make_file(tmp_path / "f", 30 * MiB)
    key = "it/retry.bin"
    store = FakeStateStore()
    conn_id = connection(config_kwargs={"retries": {"mode": "standard", "max_attempts": 0}})
    # Without task_state_store (Airflow < 3.3) the retry can only adopt what ListMultipartUploads shows,
    # after adopt_quiet_after of quiet: no wait here, so that the fallback is exercised at once.
    first = operator(conn_id, path, f"s3://{BUCKET}/{key}", concurrency=1, adopt_quiet_after=0)
    ti = FakeTaskInstance(try_number=1, max_tries=1)  # a retry will follow

    # The connection "breaks" at part 4 (botocore may not retry): armed before the first request and
    # decided by the proxy as each UploadPart arrives, so no part can slip past it (one part at a time).
    proxy.fail_nth("UploadPart", 4)
    with pytest.raises(S3UploadError):
        first.execute({"ti": ti, "task_state_store": store})
    kept = incomplete_uploads(s3, BUCKET)
    assert len(kept) == 1
    if AIRFLOW_V_3_3_PLUS:  # the resume record; older Airflow has no task_state_store: ListMultipartUploads finds it
        assert store.data[STATE_KEY]["upload_id"] == kept[0]["UploadId"]
    sent = [(r.part_number, r.status) for r in proxy.requests() if r.kind == "UploadPart"]
    assert sent[:4] == [(1, 200), (2, 200), (3, 200), (4, 500)], sent  # the break came where it was armed
    proxy.clear_faults()
    proxy.reset_counts()
    retry = operator(conn_id, path, f"s3://{BUCKET}/{key}", concurrency=1, adopt_quiet_after=0)
    ti2 = FakeTaskInstance(try_number=2, max_tries=1)
    result = retry.execute({"ti": ti2, "task_state_store": store})
    assert result["upload_id"] == kept[0]["UploadId"]
    assert ti2.xcom["upload_id"] == kept[0]["UploadId"]  # XCom (cleared per try) says what was continued
    assert result["parts_resumed"] == 3 and result["parts_sent"] == 3
    assert proxy.count("UploadPart", status=200) == 3
    assert STATE_KEY not in store.data  # done: nothing left to resume
    if not AIRFLOW_V_3_3_PLUS:
        assert "with ListMultipartUploads" in caplog.text + capsys.readouterr().out
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert incomplete_uploads(s3, BUCKET) == []


def test_secrets_never_reach_logs_xcom_results_or_errors(connection, proxy, tmp_path, caplog, capsys):
    path = make_file(tmp_path / "f", 6 * MiB)
    seen: list[str] = []
    with caplog.at_level(logging.DEBUG):
        ti = FakeTaskInstance()
        result = operator(connection(), path, f"s3://{BUCKET}/it/secret.bin").execute({"ti": ti})
        seen += [repr(ti.xcom), repr(result)]
        other = make_file(tmp_path / "other", 6 * MiB, seed=9)  # another file: replace=False refuses it
        for key, source in (("s3://no-such-bucket-xyz/k", path), (f"s3://{BUCKET}/it/secret.bin", other)):
            try:
                operator(connection(), source, key).execute({})
            except Exception as e:
                seen.append(f"{e!r} {e}")
    logged = caplog.text + capsys.readouterr().out  # the task SDK may log through structlog to stdout
    assert "Started multipart upload" in logged and "NoSuchBucket" in logged  # the scan sees the real log
    seen.append(logged)
    assert len(seen) == 5
    for text in seen:
        assert SECRET_KEY not in text
