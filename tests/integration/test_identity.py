"""Proving an upload or an object is this task's (issue #19): by identity, never by key, age and CRC alone.

The operator over HTTP against moto, as an attacker (a foreign upload with hostile settings at the key, an
object with the file's size and CRC but other bytes) and as an honest user (settings changed between
tries) would meet it; and the windows where a try could end with an upload neither completed, aborted
nor recorded.
"""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from airflow_mpu_provider.hooks.multipart import S3MultipartHook
from airflow_mpu_provider.multipart.errors import S3UploadError, UploadNotRecordedError
from airflow_mpu_provider.operators.multipart_upload import STATE_KEY
from airflow_mpu_provider.version_compat import AIRFLOW_V_3_3_PLUS
from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.integration.conftest import BUCKET, FakeStateStore, FakeTaskInstance, upload_operator
from tests.support.crc_forge import forge_same_crc
from tests.support.s3_proxy import Fault, KmsStore
from tests.support.seed import seed_crashed_upload

pytestmark = pytest.mark.integration

needs_task_state_store = pytest.mark.skipif(not AIRFLOW_V_3_3_PLUS, reason="task_state_store needs Airflow >= 3.3")

operator = functools.partial(upload_operator, concurrency=1)


def uploads_of(s3, key: str) -> list[str]:
    return [u["UploadId"] for u in incomplete_uploads(s3, BUCKET, key) if u["Key"] == key]


def abort_all(s3, key: str) -> None:
    for upload_id in uploads_of(s3, key):
        s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id)


def aborted_ids(proxy) -> set[str | None]:
    return {r.upload_id for r in proxy.requests() if r.kind == "AbortMultipartUpload"}


def no_retries(connection) -> str:
    return connection(config_kwargs={"retries": {"mode": "standard", "max_attempts": 0}})


def logged(caplog, capsys) -> str:
    return caplog.text + capsys.readouterr().out


def fail_a_try_that_keeps_its_upload(connection, proxy, s3, path, key: str) -> tuple[FakeStateStore, str]:
    """A first try of the operator that fails at part 2 with a retry to come: its upload is kept and
    recorded in the returned store; returns the store and the kept UploadId."""
    store = FakeStateStore()
    proxy.fail_nth("UploadPart", 2)
    with pytest.raises(S3UploadError):
        operator(no_retries(connection), path, key, retries=1).execute(
            {"ti": FakeTaskInstance(try_number=1, max_tries=1), "task_state_store": store}
        )
    proxy.clear_faults()
    [kept] = uploads_of(s3, key)
    return store, kept


# -- 19.1: an upload found at the key carries someone else's settings -----------------------------


def test_a_foreign_upload_with_hostile_settings_is_never_adopted(connection, proxy, s3, tmp_path, caplog, capsys):
    """An empty upload at the key, created public-read, REDUCED_REDUNDANCY, text/html, owner=mallory,
    unencrypted, with the task's checksum and type, quiet long enough: S3 shows none of the hostile
    settings but the storage class, so it cannot be proven to be the task's. Not adopted, not aborted;
    the object gets exactly the task's settings."""
    key = "identity/hostile-upload.bin"
    foreign = s3.create_multipart_upload(
        Bucket=BUCKET,
        Key=key,
        ACL="public-read",
        StorageClass="REDUCED_REDUNDANCY",
        ContentType="text/html",
        Metadata={"owner": "mallory"},
        ChecksumAlgorithm="CRC32C",
        ChecksumType="FULL_OBJECT",
    )["UploadId"]
    path = make_file(tmp_path / "f", 11 * MiB)
    task = operator(
        connection(),
        path,
        key,
        sse_kms_key_id="alias/backups",
        storage_class="STANDARD_IA",
        content_type="application/x-backup",
        metadata={"owner": "backups"},
        adopt_quiet_after=0,
    )
    try:
        with caplog.at_level(logging.WARNING):
            result = task.execute({"ti": FakeTaskInstance()})
        assert result["upload_id"] != foreign
        assert foreign not in {r.upload_id for r in proxy.requests() if r.kind == "UploadPart"}
        assert foreign not in aborted_ids(proxy) and uploads_of(s3, key) == [foreign]  # not ours: left alone
        assert "S3 does not show for an incomplete upload" in logged(caplog, capsys)
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert (head["StorageClass"], head["ContentType"]) == ("STANDARD_IA", "application/x-backup")
        assert head["Metadata"] == {"owner": "backups"}
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", "alias/backups")
        # moto answers GetObjectAcl of this object with a 500: the upload the object came from was created
        # by this task, without an ACL header (the foreign one's public-read stayed with the foreign upload).
        [create] = [r for r in proxy.requests() if r.kind == "CreateMultipartUpload"]
        assert not [name for name in create.headers if name.lower() in ("x-amz-acl", "x-amz-grant-read")]
        assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    finally:
        abort_all(s3, key)


@needs_task_state_store
def test_settings_changed_between_tries_start_a_fresh_upload_and_the_old_one_is_aborted(
    connection, proxy, s3, tmp_path, caplog, capsys
):
    """An honest user adds encryption, a storage class, a content type and metadata after a failed try:
    the recorded upload (ours) was created without them, so it is aborted, and a fresh one carries them."""
    key = "identity/settings-changed.bin"
    path = make_file(tmp_path / "f", 16 * MiB)
    store, kept = fail_a_try_that_keeps_its_upload(connection, proxy, s3, path, key)
    assert store.data[STATE_KEY]["upload_id"] == kept
    proxy.reset_counts()
    changed = {
        "sse_kms_key_id": "alias/backups",
        "storage_class": "STANDARD_IA",
        "content_type": "application/x-backup",
        "metadata": {"owner": "backups"},
    }
    with caplog.at_level(logging.WARNING):
        result = operator(connection(), path, key, retries=1, **changed).execute(
            {"ti": FakeTaskInstance(try_number=2, max_tries=1), "task_state_store": store}
        )
    assert result["upload_id"] != kept and result["parts_resumed"] == 0
    assert kept in aborted_ids(proxy) and uploads_of(s3, key) == []
    text = logged(caplog, capsys)
    assert "object settings" in text and "changed since it was created" in text, text
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert (head["StorageClass"], head["ContentType"], head["Metadata"]) == (
        "STANDARD_IA",
        "application/x-backup",
        {"owner": "backups"},
    )
    assert head["ServerSideEncryption"] == "aws:kms"
    assert STATE_KEY not in store.data


# -- 19.2: "byte-for-byte the file" must not be a CRC ----------------------------------------------


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C"])
def test_an_object_with_the_files_size_and_crc_but_other_bytes_is_not_the_file(
    connection, proxy, s3, tmp_path, algorithm
):
    """Four bytes adjusted give other bytes the file's CRC: the MD5 ETag S3 keeps tells them apart, so
    replace=False refuses the object (nothing sent) and object_matches says no."""
    key = f"identity/crc-forged-{algorithm}.bin"
    path = make_file(tmp_path / "f", 6 * MiB)
    forged = forge_same_crc(path.read_bytes(), algorithm)
    s3.put_object(Bucket=BUCKET, Key=key, Body=forged, ChecksumAlgorithm=algorithm)
    conn_id = connection()
    try:
        proxy.reset_counts()
        with pytest.raises(S3UploadError, match="already exists.*MD5 ETag differs") as info:
            operator(conn_id, path, key, checksum_algorithm=algorithm).execute({"ti": FakeTaskInstance()})
        assert info.value.code == "ObjectExists"
        assert proxy.count("CreateMultipartUpload") == 0 and proxy.count("UploadPart") == 0
        assert not S3MultipartHook(aws_conn_id=conn_id).object_matches(path, key, BUCKET)
        # The file's own object matches, by its MD5 ETag: a proof, not a CRC.
        s3.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes(), ChecksumAlgorithm=algorithm)
        result = operator(conn_id, path, key, checksum_algorithm=algorithm).execute({"ti": FakeTaskInstance()})
        assert result["bytes_sent"] == 0 and result["crc_only"] is None
    finally:
        s3.delete_object(Bucket=BUCKET, Key=key)


# -- 19.4: every candidate upload is considered, newest first ---------------------------------------


def test_adopt_quiet_after_none_never_lists_nor_adopts_a_found_upload(connection, proxy, s3, tmp_path):
    """The opt-out for buckets where others may create uploads at your keys: an upload at the key that
    the defaults would adopt (quiet, the task's settings, every part verifying) is not even listed; the
    task uploads into one of its own and leaves the found one alone."""
    key = "identity/no-adoption.bin"
    path = make_file(tmp_path / "f", 16 * MiB, seed=5)
    found = seed_crashed_upload(s3, BUCKET, key, path.read_bytes(), (1, 2))
    try:
        proxy.reset_counts()
        result = operator(connection(), path, key, adopt_quiet_after=None).execute({"ti": FakeTaskInstance()})
        assert result["upload_id"] != found and result["parts_resumed"] == 0
        assert proxy.count("ListMultipartUploads") == 0 and proxy.count("CreateMultipartUpload") == 1
        assert found not in aborted_ids(proxy) and uploads_of(s3, key) == [found]
        assert sha256_object(s3, BUCKET, key) == sha256_file(path)
        hook = S3MultipartHook(aws_conn_id=connection())
        proxy.reset_counts()
        again = hook.upload_file(path, key, BUCKET, replace=True, part_size=5 * MiB, adopt_quiet_after=None)
        assert again["parts_resumed"] == 0 and proxy.count("ListMultipartUploads") == 0
        assert uploads_of(s3, key) == [found]
        # the defaults would have taken it: the seeded upload is a real candidate
        taken = hook.upload_file(path, key, BUCKET, replace=True, part_size=5 * MiB, adopt_quiet_after=0)
        assert (taken["upload_id"], taken["parts_resumed"]) == (found, 2)
    finally:
        abort_all(s3, key)


def test_an_older_resumable_upload_is_adopted_when_a_newer_one_does_not_verify(
    connection, proxy, s3, tmp_path, caplog, capsys, monkeypatch
):
    """The dead run's upload holds 4 of the file's 6 parts; a newer upload holds 1 part of another
    version of the file. The newer is tried first, fails verification and is left alone (logged); the
    older is adopted and only the 2 missing parts are sent. moto reports one Initiated time for every
    upload, so the listing is given the times S3 would report (the older 2 hours ago, the newer 1)."""
    key = "identity/older-candidate.bin"
    path = make_file(tmp_path / "f", 28 * MiB, seed=3)
    older = seed_crashed_upload(s3, BUCKET, key, path.read_bytes(), range(1, 5))
    other_version = make_file(tmp_path / "g", 28 * MiB, seed=4).read_bytes()
    newer = seed_crashed_upload(s3, BUCKET, key, other_version, [1])
    initiated = {older: datetime.now(UTC) - timedelta(hours=2), newer: datetime.now(UTC) - timedelta(hours=1)}
    _stamp_initiated(monkeypatch, initiated)
    try:
        proxy.reset_counts()
        with caplog.at_level(logging.INFO):
            result = operator(connection(), path, key, adopt_quiet_after=0).execute({"ti": FakeTaskInstance()})
        assert result["upload_id"] == older
        assert (result["parts_resumed"], result["parts_sent"]) == (4, 2)
        assert proxy.count("CreateMultipartUpload") == 0
        assert newer not in aborted_ids(proxy) and uploads_of(s3, key) == [newer]
        text = logged(caplog, capsys)
        assert f"Leaving incomplete upload {newer}" in text
        assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    finally:
        abort_all(s3, key)


def _stamp_initiated(monkeypatch, initiated: dict[str, datetime]) -> None:
    """Make the hook's clients see ``initiated`` as the uploads' Initiated times (AWS reports real ones)."""
    made = S3MultipartHook.get_upload_client

    def stamp(parsed: dict[str, Any], **_: Any) -> None:
        for upload in parsed.get("Uploads", []):
            upload["Initiated"] = initiated.get(upload["UploadId"], upload["Initiated"])

    def get_upload_client(self, **kwargs: Any) -> Any:
        client = made(self, **kwargs)
        client.meta.events.register("after-call.s3.ListMultipartUploads", stamp)
        return client

    monkeypatch.setattr(S3MultipartHook, "get_upload_client", get_upload_client)


# -- 19.5: every try ends completed, aborted, or kept and recorded ------------------------------------


@needs_task_state_store
def test_a_try_whose_abort_fails_keeps_its_record_and_the_next_try_finds_the_upload(connection, proxy, s3, tmp_path):
    key = "identity/abort-fails.bin"
    path = make_file(tmp_path / "f", 16 * MiB)
    store = FakeStateStore()
    proxy.fail_nth("UploadPart", 2)
    proxy.add_fault(Fault(kind="AbortMultipartUpload", action="error", status=503, code="SlowDown", times=1))
    with pytest.raises(S3UploadError):  # the last try: the upload is aborted, and the abort is answered 503
        operator(no_retries(connection), path, key).execute(
            {"ti": FakeTaskInstance(try_number=1, max_tries=0), "task_state_store": store}
        )
    proxy.clear_faults()
    [left] = uploads_of(s3, key)
    assert store.data[STATE_KEY]["upload_id"] == left  # still recorded: not forgotten with nothing pointing at it
    result = operator(connection(), path, key).execute(
        {"ti": FakeTaskInstance(try_number=2, max_tries=0), "task_state_store": store}
    )
    assert result["upload_id"] == left and result["parts_resumed"] == 1
    assert uploads_of(s3, key) == [] and STATE_KEY not in store.data


class FailingStore(FakeStateStore):
    """A task_state_store whose ``set`` or ``delete`` fails (the API server unreachable)."""

    def __init__(self, *, fail: str) -> None:
        super().__init__()
        self.fail = fail

    def set(self, key: str, value: Any, **kwargs: Any) -> None:
        if self.fail == "set":
            raise ConnectionError("task_state_store: API server unreachable")
        super().set(key, value, **kwargs)

    def delete(self, key: str) -> None:
        if self.fail == "delete":
            raise ConnectionError("task_state_store: API server unreachable")
        super().delete(key)


@needs_task_state_store
def test_an_upload_that_cannot_be_recorded_is_aborted_even_with_a_retry_to_come(connection, proxy, s3, tmp_path):
    key = "identity/record-fails.bin"
    path = make_file(tmp_path / "f", 11 * MiB)
    with pytest.raises(UploadNotRecordedError, match="could not record upload"):
        operator(connection(), path, key, retries=1).execute(
            {"ti": FakeTaskInstance(try_number=1, max_tries=1), "task_state_store": FailingStore(fail="set")}
        )
    assert proxy.count("CreateMultipartUpload") == 1
    assert uploads_of(s3, key) == []  # not kept with nothing pointing at it


@needs_task_state_store
def test_a_store_that_cannot_forget_does_not_fail_a_finished_upload(connection, s3, tmp_path, caplog, capsys):
    key = "identity/delete-fails.bin"
    path = make_file(tmp_path / "f", 6 * MiB)
    with caplog.at_level(logging.WARNING):
        result = operator(connection(), path, key).execute(
            {"ti": FakeTaskInstance(), "task_state_store": FailingStore(fail="delete")}
        )
    assert result["size"] == 6 * MiB and sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert "Could not clear the record in task_state_store" in logged(caplog, capsys)


# -- also seen: ListParts that does not name the checksum algorithm -----------------------------------


def test_a_found_upload_created_with_another_checksum_is_not_adopted_when_list_parts_omits_it(
    connection, proxy, s3, tmp_path
):
    """moto's ListParts names no ChecksumAlgorithm (some stores' do not either); ListMultipartUploads
    does. A found upload created with CRC32 holds this file's part, the task uses CRC32C (COMPOSITE both):
    adopting it would complete a CRC32 upload with CRC32C part checksums and report a checksum the
    object does not have. It is left alone."""
    key = "identity/other-algorithm.bin"
    path = make_file(tmp_path / "f", 11 * MiB)
    found = seed_crashed_upload(s3, BUCKET, key, path.read_bytes(), [1], checksum_type=None, algorithm="CRC32")
    try:
        result = operator(connection(), path, key, adopt_quiet_after=0, checksum_type="COMPOSITE").execute(
            {"ti": FakeTaskInstance()}
        )
        assert result["upload_id"] != found and result["parts_resumed"] == 0
        assert result["checksum_algorithm"] == "CRC32C"
        assert uploads_of(s3, key) == [found] and found not in aborted_ids(proxy)
        assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    finally:
        abort_all(s3, key)


@needs_task_state_store
def test_an_upload_recorded_by_the_previous_version_is_aborted_once_and_started_afresh(
    connection, proxy, s3, tmp_path, caplog, capsys
):
    """A record without the object settings' fingerprint (written before this version) cannot prove
    the upload's settings: it is ours, so it is aborted, and the retry uploads afresh."""
    key = "identity/old-record.bin"
    path = make_file(tmp_path / "f", 16 * MiB)
    store, kept = fail_a_try_that_keeps_its_upload(connection, proxy, s3, path, key)
    del store.data[STATE_KEY]["object_args"]  # as the previous version recorded it
    proxy.reset_counts()
    with caplog.at_level(logging.WARNING):
        result = operator(connection(), path, key, retries=1).execute(
            {"ti": FakeTaskInstance(try_number=2, max_tries=1), "task_state_store": store}
        )
    assert result["upload_id"] != kept and kept in aborted_ids(proxy) and uploads_of(s3, key) == []
    assert "recorded by an earlier version of this provider" in logged(caplog, capsys)
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)


# -- also seen: the hook's sweep and its arguments -----------------------------------------------------


def test_the_hooks_sweep_refuses_bad_arguments_before_any_request_and_takes_seconds_and_an_s3_url(
    connection, proxy, s3
):
    key = "identity/sweep/left.bin"
    left = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    hook = S3MultipartHook(aws_conn_id=connection())
    try:
        proxy.reset_counts()
        with pytest.raises(ValueError, match="older_than"):
            hook.abort_stale_uploads(BUCKET, "identity/sweep/", -60)
        with pytest.raises(ValueError, match="different buckets"):
            hook.abort_stale_uploads(BUCKET, "s3://another-bucket/identity/sweep/", 60)
        assert proxy.requests() == []
        # Seconds, like the operator's older_than; an s3:// URL of the same bucket, like the operator's prefix.
        report = hook.abort_stale_uploads(BUCKET, f"s3://{BUCKET}/identity/sweep/", 0)
        assert (report["aborted"], report["prefix"]) == (1, "identity/sweep/")
        assert uploads_of(s3, key) == []
        report = hook.abort_stale_uploads(None, f"s3://{BUCKET}/identity/sweep/", timedelta(0))
        assert report["aborted"] == 0
    finally:
        if uploads_of(s3, key):
            s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=left)


def test_a_match_that_rests_on_a_crc_alone_says_so_in_the_log_and_the_result(
    connection, proxy, s3, tmp_path, caplog, capsys
):
    """On an SSE-KMS store the ETag is no MD5: the object's CRC is all there is to compare, so the
    replace=False success says it rests on a CRC (result ``crc_only``, a warning)."""
    proxy.kms = KmsStore(echo_checksums=True)
    key = "identity/crc-only-match.bin"
    path = make_file(tmp_path / "f", 11 * MiB)
    conn_id = connection()
    try:
        operator(conn_id, path, key, checksum_algorithm="CRC32").execute({"ti": FakeTaskInstance()})
        proxy.reset_counts()
        with caplog.at_level(logging.WARNING):
            result = operator(conn_id, path, key, checksum_algorithm="CRC32").execute({"ti": FakeTaskInstance()})
        assert result["bytes_sent"] == 0 and proxy.count("CreateMultipartUpload") == 0
        assert result["crc_only"] and "a CRC only" in result["crc_only"]
        assert "a CRC only" in logged(caplog, capsys)
    finally:
        s3.delete_object(Bucket=BUCKET, Key=key)
