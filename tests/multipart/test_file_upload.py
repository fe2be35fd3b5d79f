"""THE file-upload sequence: ledger take-over, keep or abort, record and forget, cancellation (moto in-process)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest

from airflow_mpu_provider.multipart.cancellation import CancelScope
from airflow_mpu_provider.multipart.errors import S3UploadError, UploadCancelledError, UploadNotRecordedError
from airflow_mpu_provider.multipart.file_engine import FileUploadEngine
from airflow_mpu_provider.multipart.file_upload import (
    FileUploadSequence,
    RetryPlan,
    keep_for_retry,
    recorded_part_size,
    resume_record,
)
from airflow_mpu_provider.multipart.options import UploadOptions
from airflow_mpu_provider.multipart.parts.plan import plan_parts
from airflow_mpu_provider.multipart.sources.file import FileSource
from airflow_mpu_provider.multipart.units import MiB
from airflow_mpu_provider.multipart.upload import MultipartUpload
from tests.conftest import incomplete_uploads, make_file

BUCKET = "test-bucket"
log = logging.getLogger("tests.file_upload")


class DictLedger:
    """An UploadLedger in memory; ``fail`` names a call that raises (the store unreachable)."""

    def __init__(self, record: dict[str, Any] | None = None, *, fail: str = "") -> None:
        self.record = record
        self.fail = fail

    def __str__(self) -> str:
        return "the test ledger"

    def get(self) -> dict[str, Any] | None:
        return self.record

    def set(self, record: dict[str, Any]) -> None:
        if self.fail == "set":
            raise ConnectionError("ledger unreachable")
        self.record = record

    def delete(self) -> None:
        if self.fail == "delete":
            raise ConnectionError("ledger unreachable")
        self.record = None


def sequence(client, path, key, **kwargs) -> FileUploadSequence:
    kwargs.setdefault("options", UploadOptions(concurrency=1))
    kwargs.setdefault("part_size", 5 * MiB)
    return FileUploadSequence(client, path, BUCKET, key, log=log, **kwargs)


def recorded(client, path, key, options: UploadOptions, **changes) -> tuple[str, dict]:
    """An upload an earlier try created, and the record it left (``changes`` alter what it recorded)."""
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key=key, **options.extra_args)["UploadId"]
    with FileSource(path) as source:
        record = resume_record(BUCKET, key, source, plan_parts(source.size, 5 * MiB), options)
    return upload_id, {**record, "upload_id": upload_id, **changes}


def test_a_new_upload_is_recorded_the_moment_it_exists_and_forgotten_on_success(mock_s3, tmp_path):
    path = make_file(tmp_path / "f", 11 * MiB)
    ledger = DictLedger()
    seen: list[Any] = []
    result = sequence(
        mock_s3, path, "fu/ok.bin", ledger=ledger, on_upload_started=lambda i: seen.append(ledger.record)
    ).run()
    assert seen[0]["upload_id"] == result.upload_id and seen[0]["size"] == 11 * MiB  # recorded first
    assert ledger.record is None and incomplete_uploads(mock_s3, BUCKET, "fu/") == []


def test_a_record_whose_settings_changed_is_aborted_and_forgotten_and_the_file_uploaded_afresh(mock_s3, tmp_path):
    path = make_file(tmp_path / "f", 6 * MiB)
    earlier, record = recorded(mock_s3, path, "fu/changed.bin", UploadOptions(), object_args="another fingerprint")
    ledger = DictLedger(record)
    result = sequence(mock_s3, path, "fu/changed.bin", ledger=ledger).run()
    assert result.upload_id != earlier and result.parts_resumed == 0
    assert incomplete_uploads(mock_s3, BUCKET, "fu/changed") == [] and ledger.record is None


def test_the_recorded_upload_is_resumed_when_nothing_changed(mock_s3, tmp_path):
    path = make_file(tmp_path / "f", 6 * MiB)
    earlier, record = recorded(mock_s3, path, "fu/same.bin", UploadOptions(concurrency=1))
    result = sequence(mock_s3, path, "fu/same.bin", ledger=DictLedger(record)).run()
    assert result.upload_id == earlier


def test_a_failed_abort_keeps_the_record_for_the_next_try(mock_s3, tmp_path, monkeypatch):
    path = make_file(tmp_path / "f", 6 * MiB)
    _, record = recorded(mock_s3, path, "fu/abort-fails.bin", UploadOptions(), size=1)  # another version
    ledger = DictLedger(record)

    def refused(self, **kwargs):
        raise S3UploadError("denied", code="AccessDenied", operation="AbortMultipartUpload", bucket=BUCKET,
                            key=self.key, upload_id=self.upload_id)  # fmt: skip

    monkeypatch.setattr(MultipartUpload, "abort", refused)
    with pytest.raises(S3UploadError, match="denied"):
        sequence(mock_s3, path, "fu/abort-fails.bin", ledger=ledger).run()
    assert ledger.record == record  # still recorded: the next try finds the upload and ends it


def test_a_failed_ledger_set_aborts_the_new_upload(mock_s3, tmp_path):
    path = make_file(tmp_path / "f", 6 * MiB)
    with pytest.raises(UploadNotRecordedError, match="could not record upload .* in the test ledger"):
        sequence(mock_s3, path, "fu/set-fails.bin", ledger=DictLedger(fail="set"), retry=RetryPlan()).run()
    assert incomplete_uploads(mock_s3, BUCKET, "fu/set-fails") == []


def test_a_ledger_that_cannot_forget_does_not_fail_a_finished_upload(mock_s3, tmp_path):
    path = make_file(tmp_path / "f", 6 * MiB)
    result = sequence(mock_s3, path, "fu/delete-fails.bin", ledger=DictLedger(fail="delete")).run()
    assert result.size == 6 * MiB


@pytest.mark.parametrize(("retry", "kept"), [(RetryPlan(), True), (None, False)])
def test_a_failed_run_keeps_its_upload_recorded_for_a_retry_or_aborts_it_and_says_so(
    mock_s3, tmp_path, put_part_hooks, retry, kept
):
    path = make_file(tmp_path / "f", 11 * MiB)
    ledger, aborted = DictLedger(), []
    put_part_hooks.fail_part(2, ConnectionError("connection reset by peer"))
    run = sequence(mock_s3, path, "fu/fails.bin", ledger=ledger, retry=retry, on_aborted=lambda: aborted.append(1))
    with pytest.raises(ConnectionError):
        run.run()
    left = [u["UploadId"] for u in incomplete_uploads(mock_s3, BUCKET, "fu/fails")]
    if kept:
        assert left == [ledger.record["upload_id"]] and aborted == []
        mock_s3.abort_multipart_upload(Bucket=BUCKET, Key="fu/fails.bin", UploadId=left[0])
    else:
        assert left == [] and ledger.record is None and aborted == [1]


def test_a_cancel_before_the_run_aborts_the_recorded_upload_and_creates_nothing(mock_s3, tmp_path):
    path = make_file(tmp_path / "f", 6 * MiB)
    _, record = recorded(mock_s3, path, "fu/cancelled.bin", UploadOptions(concurrency=1))
    cancel, ledger = CancelScope(), DictLedger(record)
    cancel.cancel()
    with pytest.raises(UploadCancelledError):
        sequence(mock_s3, path, "fu/cancelled.bin", ledger=ledger, retry=RetryPlan(), cancel=cancel).run()
    assert incomplete_uploads(mock_s3, BUCKET, "fu/cancelled") == [] and ledger.record is None


def test_a_cancel_after_completion_still_fails_and_keeps_the_record(mock_s3, tmp_path, monkeypatch):
    path = make_file(tmp_path / "f", 6 * MiB)
    cancel, ledger = CancelScope(), DictLedger()
    real = FileUploadEngine.run

    def completes_then_killed(self, **kwargs):
        result = real(self, **kwargs)
        cancel.cancel()
        return result

    monkeypatch.setattr(FileUploadEngine, "run", completes_then_killed)
    with pytest.raises(UploadCancelledError, match="after it had finished"):
        sequence(mock_s3, path, "fu/killed-late.bin", ledger=ledger, cancel=cancel).run()
    assert ledger.record is not None  # the next try finds the upload gone and the object already the file
    assert mock_s3.head_object(Bucket=BUCKET, Key="fu/killed-late.bin")["ContentLength"] == 6 * MiB


def test_replace_false_with_the_file_already_there_ends_the_recorded_upload_and_sends_nothing(mock_s3, tmp_path):
    path = make_file(tmp_path / "f", 6 * MiB)
    sequence(mock_s3, path, "fu/there.bin").run()
    options = UploadOptions(concurrency=1, overwrite=False)
    _, record = recorded(mock_s3, path, "fu/there.bin", options)
    ledger = DictLedger(record)
    result = sequence(mock_s3, path, "fu/there.bin", options=options, ledger=ledger).run()
    assert (result.parts_sent, result.upload_id) == (0, "")
    assert incomplete_uploads(mock_s3, BUCKET, "fu/there") == [] and ledger.record is None


def test_the_recorded_part_size_is_kept_for_the_same_file_only(tmp_path):
    path = make_file(tmp_path / "f", 40 * MiB)
    with FileSource(path) as source:
        record = {
            **resume_record(BUCKET, "k", source, plan_parts(source.size, 8 * MiB), UploadOptions()),
            "upload_id": "u",
        }
        assert recorded_part_size(record, source, log) == 8 * MiB
        assert recorded_part_size({**record, "mtime_ns": 1}, source, log) is None  # another version of the file
        assert recorded_part_size({**record, "part_size": 1}, source, log) is None  # not a size S3 accepts
        assert recorded_part_size({**record, "upload_id": None}, source, log) is None


@pytest.mark.parametrize(
    ("retry", "recorded_", "listing", "extra_args", "quiet", "expected"),
    [
        (RetryPlan(delay=timedelta(minutes=20)), False, True, {}, timedelta(minutes=15), True),  # adopted in time
        (RetryPlan(delay=timedelta(minutes=5)), False, True, {}, timedelta(minutes=15), False),  # adoptable too late
        (RetryPlan(delay=timedelta(minutes=20)), False, False, {}, timedelta(minutes=15), False),  # nothing can list
        (RetryPlan(delay=timedelta(minutes=20)), False, True, {"ContentType": "x"}, timedelta(0), False),  # hidden
        (RetryPlan(delay=timedelta(minutes=20)), False, True, {}, None, False),  # never adopts a found upload
        (RetryPlan(), True, False, {"ContentType": "x"}, None, True),  # the ledger points at it
        (RetryPlan(resumes_by_id=True), False, False, {}, None, True),  # the caller keeps the UploadId
        (None, True, True, {}, timedelta(0), False),  # no retry follows
    ],
)
def test_an_upload_is_kept_only_where_the_retry_will_find_it(retry, recorded_, listing, extra_args, quiet, expected):
    decided = keep_for_retry(
        retry, recorded=recorded_, listing_available=listing, extra_args=extra_args, adopt_quiet_after=quiet, log=log
    )
    assert decided is expected
