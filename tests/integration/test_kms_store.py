"""Uploads to an SSE-KMS store: ETags that look like MD5s but are not, with and without checksum echo.

moto's ETags are MD5s whatever the encryption, so the proxy plays S3 with SSE-KMS (``KmsStore``):
every answer says ``ServerSideEncryption: aws:kms`` and every ETag is opaque. The operator is not told
(the bucket's default encryption is invisible to its arguments) or is (``sse_kms_key_id``); either way
nothing may be taken for corruption, and nothing unverifiable may be trusted on resume.
"""

from __future__ import annotations

import logging

import pytest

from airflow_mpu_provider.multipart.errors import S3UploadError
from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator
from airflow_mpu_provider.version_compat import AIRFLOW_V_3_3_PLUS
from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.integration.conftest import BUCKET, FakeStateStore, FakeTaskInstance
from tests.support.s3_proxy import KmsStore

pytestmark = pytest.mark.integration


def upload(conn_id: str, path, key: str, **kwargs) -> MultipartUploadOperator:
    kwargs.setdefault("part_size", 5 * MiB)
    kwargs.setdefault("concurrency", 2)
    return MultipartUploadOperator(
        task_id="upload", file=str(path), key=f"s3://{BUCKET}/{key}", aws_conn_id=conn_id, progress_interval=0, **kwargs
    )


def logged_text(caplog, capsys) -> str:
    return caplog.text + capsys.readouterr().out  # the task SDK may log through structlog to stdout


@pytest.mark.parametrize("echo", [False, True], ids=["no-checksum-echo", "checksum-echo"])
@pytest.mark.parametrize("checksum", ["CRC32C", None], ids=["crc32c", "md5-only"])
@pytest.mark.parametrize("told", [False, True], ids=["bucket-default-kms", "sse_kms_key_id"])
def test_upload_to_a_kms_store_completes_and_says_what_it_could_verify(
    connection, proxy, s3, tmp_path, caplog, capsys, echo, checksum, told
):
    proxy.kms = KmsStore(echo_checksums=echo)
    path = make_file(tmp_path / "f", 12 * MiB)
    key = f"kms/{checksum}-{echo}-{told}.bin"
    kwargs = {"sse_kms_key_id": "alias/test"} if told else {}
    with caplog.at_level(logging.INFO):
        result = upload(connection(), path, key, checksum_algorithm=checksum, **kwargs).execute({})
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert result["parts"] == 3 and result["size"] == 12 * MiB
    parts = [r for r in proxy.requests() if r.kind == "UploadPart"]
    assert parts and all(r.status == 200 for r in parts)
    text = logged_text(caplog, capsys)
    if echo and checksum:
        assert "nothing to verify parts with" not in text  # each part was proven by its echoed checksum
    else:
        assert "the store gives nothing to verify parts with" in text
        assert "only the size could be verified" in text
    completed = [line for line in text.splitlines() if f"Completed s3://{BUCKET}/{key}" in line]
    assert completed and "; verified size" in completed[0]
    assert "ETag" not in completed[0].split("; verified", 1)[1]  # an opaque ETag is never claimed as verified
    assert incomplete_uploads(s3, BUCKET, "kms/") == []


@pytest.mark.parametrize("told", [False, True], ids=["bucket-default-kms", "sse_kms_key_id"])
def test_resume_on_a_kms_store_sends_unverifiable_parts_again(connection, proxy, s3, tmp_path, told):
    """ListParts gives opaque ETags and no checksums: no stored part can be proven, so none is trusted."""
    proxy.kms = KmsStore(echo_checksums=False)
    path = make_file(tmp_path / "f", 20 * MiB)
    key = f"kms/resume-{told}.bin"
    kwargs = {"sse_kms_key_id": "alias/test"} if told else {}
    conn_id = connection(config_kwargs={"retries": {"mode": "standard", "max_attempts": 0}})

    proxy.fail_nth("UploadPart", 3)  # decided as requests arrive: parts 1 and 2 are stored
    store = FakeStateStore()  # Airflow >= 3.3: the record makes the kept upload the retry's own
    kwargs["adopt_quiet_after"] = 0  # older Airflow: the retry finds it by listing, at once
    with pytest.raises(S3UploadError):
        upload(conn_id, path, key, concurrency=1, **kwargs).execute(
            {"ti": FakeTaskInstance(max_tries=1), "task_state_store": store}
        )
    kept = incomplete_uploads(s3, BUCKET, key)
    # Kept for the retry; but without a record (Airflow < 3.3) a task that sets sse_kms_key_id could only find
    # it by listing and never adopts a found upload whose encryption S3 does not show: aborted instead.
    unrecorded_kms = told and not AIRFLOW_V_3_3_PLUS
    assert len(kept) == (0 if unrecorded_kms else 1)
    proxy.on_request = None
    proxy.clear_faults()
    proxy.reset_counts()

    result = upload(conn_id, path, key, concurrency=1, **kwargs).execute(
        {"ti": FakeTaskInstance(try_number=2), "task_state_store": store}
    )
    assert proxy.count("ListParts") >= (0 if unrecorded_kms else 1)  # the stored parts were looked at ...
    assert (result["parts_resumed"], result["parts_sent"]) == (0, 4)  # ... and none was trusted
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    if AIRFLOW_V_3_3_PLUS:  # recorded, so ours: its parts were sent again into it
        assert result["upload_id"] == kept[0]["UploadId"]
    elif unrecorded_kms:
        assert proxy.count("CreateMultipartUpload") == 1  # afresh
    else:  # only found: parts that cannot be verified make it someone else's, left alone, never written to
        assert [u["UploadId"] for u in incomplete_uploads(s3, BUCKET, key)] == [kept[0]["UploadId"]]
        s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=kept[0]["UploadId"])
    assert incomplete_uploads(s3, BUCKET, key) == []
