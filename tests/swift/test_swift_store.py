"""The provider against OpenStack Swift's S3 API: what a user with an on-prem Swift meets.

Swift (2.30, ``s3api``) stores parts and answers with MD5 ETags, keeps no S3 checksums (no echo on
UploadPart, none in Create's answer, ListParts or Complete's), accepts only ``PartNumber`` and ``ETag``
in a CompleteMultipartUpload part entry, answers a conditional Complete on an existing key with 412
``InvalidRequest``, and implements neither server-side encryption nor tagging (501) nor S3's storage
classes. Tests parametrized over ``CHECKSUMS`` run at the defaults (xfail until issue 18.1's fallback
lands) and with checksums off.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_mpu_provider.multipart.errors import CommandFailedError, S3UploadError
from airflow_mpu_provider.operators.cleanup import S3AbortStaleUploadsOperator
from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator
from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.integration.conftest import FakeTaskInstance
from tests.support.s3_proxy import Fault
from tests.support.seed import seed_crashed_upload
from tests.swift.conftest import BUCKET, CHECKSUMS, wait_until_swift_shows_it_past

pytestmark = pytest.mark.swift

PART = 5 * MiB


def multipart_etag(path: Path, part_size: int = PART) -> str:
    """S3's ETag of a multipart object of ``path`` in ``part_size`` parts: md5 of the part md5s, "-N"."""
    digests = []
    with path.open("rb") as f:
        while chunk := f.read(part_size):
            digests.append(hashlib.md5(chunk).digest())
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def upload_operator(conn_id: str, path: Path, key: str, **kwargs: Any) -> MultipartUploadOperator:
    kwargs.setdefault("part_size", PART)
    kwargs.setdefault("progress_interval", 0)
    return MultipartUploadOperator(
        task_id="upload", file=str(path), key=f"s3://{BUCKET}/{key}", aws_conn_id=conn_id, **kwargs
    )


def stored_parts(s3, key: str, upload_id: str) -> list[int]:
    return [p["PartNumber"] for p in s3.list_parts(Bucket=BUCKET, Key=key, UploadId=upload_id).get("Parts", [])]


# -- the operator, through an Airflow connection ----------------------------------------------------


@pytest.mark.parametrize("checksums", CHECKSUMS)
def test_operator_uploads_and_verifies_through_an_airflow_connection(
    swift_connection, swift_proxy, swift_s3, clean_key, tmp_path, checksums
):
    path = make_file(tmp_path / "dump", 23 * MiB + 7)
    key = clean_key(f"op/basic-{bool(checksums)}.bin")
    ti = FakeTaskInstance()
    result = upload_operator(swift_connection, path, key, concurrency=4, **checksums).execute({"ti": ti})
    assert (result["size"], result["parts"], result["parts_sent"]) == (23 * MiB + 7, 5, 5)
    assert ti.xcom["upload_id"] == result["upload_id"]
    # Swift keeps no S3 checksum: what is verified, and returned, is the multipart ETag of the part MD5s.
    assert result["etag"] == multipart_etag(path)
    assert result["checksum"] is None
    assert swift_s3.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"') == result["etag"]
    assert sha256_object(swift_s3, BUCKET, key) == sha256_file(path)
    assert swift_proxy.count("UploadPart", status=200) == 5
    assert incomplete_uploads(swift_s3, BUCKET, key) == []


def test_operator_resumes_an_upload_found_with_list_multipart_uploads(
    swift_connection, swift_proxy, swift_s3, clean_key, tmp_path
):
    """A crashed run's upload (CRC32C parts, as the engine sends them: Swift ignores the checksums) is
    adopted once quiet, its stored parts verified by their MD5 ETags, and only the rest is sent."""
    path = make_file(tmp_path / "dump", 26 * MiB, seed=2)
    key = clean_key("op/found.bin")
    crashed = seed_crashed_upload(swift_s3, BUCKET, key, path.read_bytes(), parts=(1, 2, 4), part_size=PART)
    wait_until_swift_shows_it_past(swift_s3, key)
    result = upload_operator(swift_connection, path, key, adopt_quiet_after=0).execute({})
    assert result["upload_id"] == crashed
    assert (result["parts_resumed"], result["parts_sent"]) == (3, 3)
    assert swift_proxy.count("UploadPart", status=200) == 3 and swift_proxy.count("CreateMultipartUpload") == 0
    assert sha256_object(swift_s3, BUCKET, key) == sha256_file(path)
    assert incomplete_uploads(swift_s3, BUCKET, key) == []


# -- resume after a crash ---------------------------------------------------------------------------


@pytest.mark.parametrize("checksums", CHECKSUMS)
def test_a_sigkilled_scripts_upload_is_resumed_and_only_missing_parts_are_sent(
    swift_connection, swift_proxy, swift_s3, clean_key, tmp_path, checksums
):
    """A script uploading with the hook is SIGKILLed mid-upload (nothing in it can run); the next run
    finds the upload, verifies what Swift holds (ListParts before) and sends exactly the other parts."""
    path = make_file(tmp_path / "f", 30 * MiB, seed=11)
    key = clean_key(f"hook/killed-{bool(checksums)}.bin")
    total = 6
    script = (
        "from airflow_mpu_provider.hooks.multipart import S3MultipartHook\n"
        f"S3MultipartHook(aws_conn_id={swift_connection!r}).upload_file({str(path)!r}, {key!r}, {BUCKET!r}, "
        f"part_size={PART}, concurrency=1, **{checksums!r})\n"
    )
    swift_proxy.add_fault(Fault("UploadPart", "throttle", rate=2 * MiB))  # 2.5 s a part: killed mid-upload
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    process = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        assert wait_for(lambda: swift_proxy.count("UploadPart", status=200) >= 2, timeout=120), "no part was stored"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    swift_proxy.clear_faults()
    [left] = incomplete_uploads(swift_s3, BUCKET, key)  # the killed run could not abort it
    before = stored_parts(swift_s3, key, left["UploadId"])
    assert 2 <= len(before) < total, before
    wait_until_swift_shows_it_past(swift_s3, key)
    swift_proxy.reset_counts()
    from airflow_mpu_provider.hooks.multipart import S3MultipartHook

    result = S3MultipartHook(aws_conn_id=swift_connection).upload_file(
        path, key, BUCKET, part_size=PART, adopt_quiet_after=0, **checksums
    )
    assert result["upload_id"] == left["UploadId"]
    assert (result["parts_resumed"], result["parts_sent"]) == (len(before), total - len(before))
    assert swift_proxy.count("UploadPart", status=200) == total - len(before)
    assert swift_proxy.count("CreateMultipartUpload") == 0
    assert result["etag"] == multipart_etag(path)
    assert sha256_object(swift_s3, BUCKET, key) == sha256_file(path)
    assert incomplete_uploads(swift_s3, BUCKET, key) == []


# -- replace=False ----------------------------------------------------------------------------------


def put_multipart(s3, key: str, path: Path, part_size: int = PART) -> str:
    """Upload ``path`` as another tool would (plain boto3 multipart, no checksums); returns the ETag."""
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    parts = []
    with path.open("rb") as f:
        while chunk := f.read(part_size):
            number = len(parts) + 1
            etag = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk)["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
    return s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})[
        "ETag"
    ].strip('"')


def test_replace_false_with_the_files_bytes_already_there_sends_nothing(
    hook, swift_proxy, swift_s3, clean_key, tmp_path
):
    path = make_file(tmp_path / "f", 11 * MiB, seed=3)
    key = clean_key("replace/same.bin")
    etag = put_multipart(swift_s3, key, path)
    swift_proxy.reset_counts()
    result = hook.upload_file(path, key, BUCKET, part_size=PART)  # the defaults: replace=False
    assert result["bytes_sent"] == 0 and result["etag"] == etag == multipart_etag(path)
    assert swift_proxy.count("CreateMultipartUpload") == 0 and swift_proxy.count("UploadPart") == 0
    # Swift cannot tell a part's size (HeadObject with PartNumber: 405): the caller's part size is used.
    assert hook.object_matches(path, key, BUCKET, part_size=PART)


def test_object_matches_an_upload_file_object_without_being_told_its_part_size(hook, swift_s3, clean_key, tmp_path):
    """Swift answers HeadObject with PartNumber with 405, so the object's part size is unknown: the hook
    assumes the one upload_file picks for the file (5 MiB here: at least ~64 parts down to 5 MiB), and says
    False for other bytes."""
    path = make_file(tmp_path / "f", 40 * MiB + 3, seed=12)
    key = clean_key("matches/auto-parts.bin")
    result = hook.upload_file(path, key, BUCKET, checksum_algorithm=None)
    assert (result["part_size"], result["parts"]) == (5 * MiB, 9)
    assert hook.object_matches(path, key, BUCKET)
    assert hook.object_matches(path, f"s3://{BUCKET}/{key}", part_size=PART)
    assert not hook.object_matches(path, key, BUCKET, part_size=16 * MiB)  # cut in 16 MiB parts: 3, not 9
    assert not hook.object_matches(make_file(tmp_path / "g", 40 * MiB + 3, seed=13), key, BUCKET)


def test_replace_false_refuses_other_bytes_before_anything_is_created(hook, swift_proxy, swift_s3, clean_key, tmp_path):
    path = make_file(tmp_path / "f", 11 * MiB, seed=4)
    key = clean_key("replace/other.bin")
    put_multipart(swift_s3, key, make_file(tmp_path / "g", 11 * MiB, seed=5))  # same size, other bytes
    swift_proxy.reset_counts()
    assert not hook.object_matches(path, key, BUCKET, part_size=PART)
    with pytest.raises(S3UploadError, match="already exists; set replace=True") as info:
        hook.upload_file(path, key, BUCKET, part_size=PART)
    assert info.value.code == "ObjectExists"
    assert swift_proxy.count("CreateMultipartUpload") == 0
    assert incomplete_uploads(swift_s3, BUCKET, key) == []


@pytest.mark.parametrize("racer", ["other bytes", "the same bytes"])
def test_an_object_that_appears_during_the_upload_is_never_replaced(
    hook, swift_proxy, swift_s3, clean_key, put_part_hooks, tmp_path, racer
):
    """replace=False completes with If-None-Match: *. Swift answers a key that appeared meanwhile with
    412 ``InvalidRequest`` (AWS: ``PreconditionFailed``): that is the failed precondition all the same.
    Another object stands and the task fails with ObjectExists; the file's own bytes are success. Either
    way this run's upload is aborted. (Checksums off: the 412 alone is what is tested.)"""
    path = make_file(tmp_path / "f", 11 * MiB, seed=6)
    key = clean_key(f"replace/race-{racer.replace(' ', '-')}.bin")
    theirs = path if racer == "the same bytes" else make_file(tmp_path / "g", 11 * MiB, seed=7)
    raced = threading.Event()

    def another_run_completes(number: int) -> None:
        if number == 1 and not raced.is_set():
            raced.set()
            put_multipart(swift_s3, key, theirs)

    put_part_hooks.after = another_run_completes
    if racer == "other bytes":
        with pytest.raises(S3UploadError) as info:
            hook.upload_file(path, key, BUCKET, part_size=PART, concurrency=1, checksum_algorithm=None)
        assert info.value.code == "ObjectExists", info.value
    else:
        result = hook.upload_file(path, key, BUCKET, part_size=PART, concurrency=1, checksum_algorithm=None)
        assert result["etag"] == multipart_etag(path)
    assert raced.is_set()
    assert swift_proxy.count("CompleteMultipartUpload", status=412) == 1  # the store said no, and was heard
    assert sha256_object(swift_s3, BUCKET, key) == sha256_file(theirs)
    assert incomplete_uploads(swift_s3, BUCKET, key) == []


# -- the janitor ------------------------------------------------------------------------------------


def test_the_janitor_reports_then_aborts_stale_uploads_and_leaves_other_prefixes(
    swift_connection, swift_s3, clean_key, tmp_path
):
    data = make_file(tmp_path / "f", 11 * MiB, seed=8).read_bytes()
    stale = [clean_key(f"janitor/stale-{n}.bin") for n in range(2)]
    kept = clean_key("elsewhere/kept.bin")
    for key in (*stale, kept):
        seed_crashed_upload(swift_s3, BUCKET, key, data, parts=(1, 2), part_size=PART)
        wait_until_swift_shows_it_past(swift_s3, key)

    def janitor(**kwargs: Any) -> dict:
        return S3AbortStaleUploadsOperator(
            task_id="janitor", bucket=BUCKET, prefix="janitor/", aws_conn_id=swift_connection, **kwargs
        ).execute({})

    assert janitor(older_than=3600)["aborted"] == 0  # they are young
    report = janitor(older_than=0, dry_run=True)
    assert (report["aborted"], report["would_abort"], report["bytes"], report["size_unknown"]) == (
        0,
        2,
        2 * 10 * MiB,
        0,
    )
    assert len(incomplete_uploads(swift_s3, BUCKET, "janitor/")) == 2  # a dry run aborts nothing
    report = janitor(older_than=0)
    assert report["aborted"] == 2 and sorted(u["key"] for u in report["uploads"]) == stale
    assert incomplete_uploads(swift_s3, BUCKET, "janitor/") == []
    assert [u["Key"] for u in incomplete_uploads(swift_s3, BUCKET, "elsewhere/")] == [kept]


# -- streams, commands and the hook -----------------------------------------------------------------


@pytest.mark.parametrize("checksums", CHECKSUMS)
def test_upload_stream_of_chunks_across_parts(hook, swift_s3, clean_key, checksums):
    data = os.urandom(13 * MiB + 11)
    key = clean_key(f"stream/chunks-{bool(checksums)}.bin")
    chunks = (data[i : i + 1_000_003] for i in range(0, len(data), 1_000_003))
    result = hook.upload_stream(chunks, key, BUCKET, part_size=PART, equal_parts=True, **checksums)
    assert result["size"] == len(data) and result["parts"] == 3
    assert sha256_object(swift_s3, BUCKET, key) == hashlib.sha256(data).hexdigest()
    assert incomplete_uploads(swift_s3, BUCKET, key) == []


@pytest.mark.parametrize("checksums", CHECKSUMS)
def test_upload_command_uploads_its_output_and_a_failure_aborts(hook, swift_s3, clean_key, tmp_path, checksums):
    path = make_file(tmp_path / "f", 12 * MiB, seed=9)
    key = clean_key(f"stream/command-{bool(checksums)}.bin")
    result = hook.upload_command(f"cat '{path}'", key, BUCKET, part_size=PART, **checksums)
    assert result["size"] == 12 * MiB
    assert sha256_object(swift_s3, BUCKET, key) == sha256_file(path)
    failing = clean_key(f"stream/command-fails-{bool(checksums)}.bin")
    with pytest.raises(CommandFailedError, match="exited with status 3"):
        hook.upload_command(f"cat '{path}'; exit 3", failing, BUCKET, part_size=PART, **checksums)
    assert incomplete_uploads(swift_s3, BUCKET, "stream/command") == []
    assert "Contents" not in swift_s3.list_objects_v2(Bucket=BUCKET, Prefix=failing)


@pytest.mark.parametrize("checksums", CHECKSUMS)
def test_the_fault_rows_that_apply_retried_and_byte_identical(
    hook, swift_proxy, swift_s3, clean_key, tmp_path, checksums
):
    """The README's fault table on Swift: UploadPart answered 503 SlowDown, a connection reset mid-part,
    CompleteMultipartUpload failing once with 500 and once with 200 and an error inside: all retried by
    botocore, and the object is exactly the file."""
    path = make_file(tmp_path / "f", 21 * MiB, seed=10)
    key = clean_key(f"faults/retried-{bool(checksums)}.bin")
    swift_proxy.add_fault(Fault("UploadPart", "error", status=503, code="SlowDown", times=2))
    swift_proxy.add_fault(Fault("UploadPart", "reset", after_bytes=MiB, times=1, skip=1))
    swift_proxy.add_fault(Fault("CompleteMultipartUpload", "error", status=500, times=1))
    swift_proxy.add_fault(Fault("CompleteMultipartUpload", "error_200", times=1))  # (faults apply in turn)
    result = hook.upload_file(path, key, BUCKET, part_size=PART, concurrency=2, **checksums)
    assert result["parts"] == 5 and result["etag"] == multipart_etag(path)
    assert swift_proxy.count("UploadPart", status=200) == 5
    assert swift_proxy.count("CompleteMultipartUpload") >= 3
    assert sha256_object(swift_s3, BUCKET, key) == sha256_file(path)
    assert incomplete_uploads(swift_s3, BUCKET, key) == []


def test_swifts_busy_backend_400_at_complete_is_sent_again(
    hook, swift_proxy, swift_s3, clean_key, tmp_path, monkeypatch
):
    """Swift's own answer when its segment check meets a busy object server (400 InvalidRequest carrying a
    503), put in front of the real Swift: Complete is sent again after pauses (shortened here) and Swift
    completes the object, exactly the file, with its multipart ETag."""
    from airflow_mpu_provider.multipart import completion

    monkeypatch.setattr(completion, "BUSY_PAUSES", (0.01,) * 4)
    path = make_file(tmp_path / "f", 11 * MiB, seed=12)
    key = clean_key("faults/busy-complete.bin")
    busy = "Errors:\n/mpu+segments/f/upload/2: 503 Service Unavailable"
    fault = Fault("CompleteMultipartUpload", "error", status=400, code="InvalidRequest", times=2, message=busy)
    swift_proxy.add_fault(fault)
    result = hook.upload_file(path, key, BUCKET, part_size=PART)
    assert swift_proxy.injections(fault) == 2 and swift_proxy.count("CompleteMultipartUpload") == 3
    assert result["etag"] == multipart_etag(path)
    assert sha256_object(swift_s3, BUCKET, key) == sha256_file(path)
    assert incomplete_uploads(swift_s3, BUCKET, key) == []


# -- what Swift does not implement: a clear error, nothing left ---------------------------------------


@pytest.mark.parametrize(
    ("option", "code", "says"),
    [
        ({"encrypt": True}, "NotImplemented", "Server-side encryption is not supported"),
        ({"sse_kms_key_id": "alias/backups"}, "NotImplemented", "Server-side encryption is not supported"),
        ({"tags": {"retention": "90d"}}, "NotImplemented", "Object tagging is not supported"),
        ({"storage_class": "STANDARD_IA"}, "InvalidStorageClass", "storage class you specified is not valid"),
    ],
    ids=["sse-s3", "sse-kms", "tags", "storage-class"],
)
def test_a_feature_swift_lacks_fails_before_any_part_with_the_stores_reason(
    swift_connection, swift_proxy, swift_s3, clean_key, tmp_path, option, code, says
):
    path = make_file(tmp_path / "f", 6 * MiB)
    key = clean_key(f"lacks/{next(iter(option))}.bin")
    with pytest.raises(S3UploadError) as info:
        upload_operator(swift_connection, path, key, **option).execute({})
    error = info.value
    assert error.code == code and error.operation == "CreateMultipartUpload"
    assert says in str(error) and f"s3://{BUCKET}/{key}" in str(error)
    assert swift_proxy.count("UploadPart") == 0
    assert incomplete_uploads(swift_s3, BUCKET, key) == []
    assert "Contents" not in swift_s3.list_objects_v2(Bucket=BUCKET, Prefix=key)


def wait_for(condition, timeout: float = 60.0) -> bool:
    """Poll ``condition`` until it holds or a generous deadline passes (never a sleep standing in for it)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
