from __future__ import annotations

import logging
import threading

import pytest

from airflow_mpu_provider.multipart.checksums.digests import checksum_b64
from airflow_mpu_provider.multipart.errors import (
    IntegrityError,
    S3UploadError,
    SourceChangedError,
    UploadCancelledError,
)
from airflow_mpu_provider.multipart.file_engine import FileUploadEngine
from airflow_mpu_provider.multipart.options import UploadOptions
from airflow_mpu_provider.multipart.parts.plan import plan_parts
from airflow_mpu_provider.multipart.sources.file import FileSource
from airflow_mpu_provider.multipart.sources.file_range import range_footprint
from airflow_mpu_provider.multipart.units import GiB, MiB
from tests.conftest import incomplete_uploads, make_file, sha256_file, sha256_object
from tests.support.crc_forge import forge_same_crc
from tests.support.local_airflow import store_echoes_no_checksums
from tests.support.seed import seed_crashed_upload

BUCKET = "test-bucket"


def engine_for(client, path, key="obj", part_size=5 * MiB, **options) -> tuple[FileUploadEngine, FileSource]:
    source = FileSource(path)
    options.setdefault("progress_interval", 0)
    engine = FileUploadEngine(
        client,
        bucket=BUCKET,
        key=key,
        source=source,
        plan=plan_parts(source.size, part_size),
        options=UploadOptions(**options),
    )
    return engine, source


@pytest.mark.parametrize("checksum", ["CRC32C", "SHA256", None])
def test_uploads_byte_identical_in_parallel_parts(mock_s3, tmp_path, checksum):
    path = make_file(tmp_path / "f", 23 * MiB + 5)
    engine, source = engine_for(mock_s3, path, checksum_algorithm=checksum, concurrency=4)
    with source:
        result = engine.run()
    assert sha256_object(mock_s3, BUCKET, "obj") == sha256_file(path)
    assert (result.parts, result.parts_sent, result.parts_resumed) == (5, 5, 0)
    assert result.etag.endswith("-5")
    assert result.bytes_sent == result.size == 23 * MiB + 5
    assert incomplete_uploads(mock_s3, BUCKET) == []


@pytest.mark.parametrize("size", [0, 1, 5 * MiB])
def test_zero_byte_and_small_files(mock_s3, tmp_path, size):
    path = make_file(tmp_path / "f", size)
    engine, source = engine_for(mock_s3, path)
    with source:
        result = engine.run()
    assert result.parts == 1
    assert mock_s3.head_object(Bucket=BUCKET, Key="obj")["ContentLength"] == size
    assert sha256_object(mock_s3, BUCKET, "obj") == sha256_file(path)


def test_upload_id_is_reported_before_any_part_is_sent(mock_s3, tmp_path):
    path = make_file(tmp_path / "f", 11 * MiB)
    seen = []
    engine, source = engine_for(mock_s3, path)
    engine.on_upload_started = lambda upload_id: seen.append(
        (upload_id, [u["UploadId"] for u in incomplete_uploads(mock_s3, BUCKET)])
    )
    with source:
        result = engine.run()
    assert seen == [(result.upload_id, [result.upload_id])]


def test_memory_is_bounded_by_workers_times_part_size():
    options = UploadOptions(concurrency=8, max_buffer_bytes=1 * GiB)
    assert options.workers_for(16 * MiB) == 8
    assert options.workers_for(525 * MiB) == 1  # a 5 TiB file: one 525 MiB part in memory at a time
    assert options.workers_for(5 * GiB) == 1


def test_failure_aborts_and_reraises(mock_s3, tmp_path, put_part_hooks):
    path = make_file(tmp_path / "f", 16 * MiB)
    engine, source = engine_for(mock_s3, path)
    put_part_hooks.fail_part(3, RuntimeError("network gone"))
    with source, pytest.raises(RuntimeError, match="network gone"):
        engine.run()
    assert incomplete_uploads(mock_s3, BUCKET) == []


def test_failure_keeps_upload_when_a_retry_will_resume_it(mock_s3, tmp_path, put_part_hooks):
    path = make_file(tmp_path / "f", 16 * MiB)
    engine, source = engine_for(mock_s3, path, concurrency=1)
    put_part_hooks.fail_part(3, ConnectionError("dropped"))
    with source, pytest.raises(ConnectionError):
        engine.run(keep_on_failure=True)
    kept = incomplete_uploads(mock_s3, BUCKET)
    assert [u["UploadId"] for u in kept] == [engine.upload.upload_id]
    # The single worker may have taken part 4 before the failure of part 3 stopped the run: what the
    # retry must do is resume exactly what is stored and send exactly the rest.
    stored = mock_s3.list_parts(Bucket=BUCKET, Key="obj", UploadId=kept[0]["UploadId"]).get("Parts", [])
    numbers = {p["PartNumber"] for p in stored}
    assert {1, 2} <= numbers and 3 not in numbers
    put_part_hooks.clear()

    retry, source = engine_for(mock_s3, path, concurrency=1)
    with source:
        result = retry.run(resume_upload_id=kept[0]["UploadId"])
    assert result.upload_id == kept[0]["UploadId"]
    assert (result.parts_resumed, result.parts_sent) == (len(numbers), 4 - len(numbers))
    assert result.bytes_resumed == sum(p["Size"] for p in stored)
    assert sha256_object(mock_s3, BUCKET, "obj") == sha256_file(path)
    assert incomplete_uploads(mock_s3, BUCKET) == []


def test_corrupt_stored_part_is_sent_again(mock_s3, tmp_path):
    path = make_file(tmp_path / "f", 16 * MiB)
    data = path.read_bytes()
    wrong_part_2 = data[: 5 * MiB] + b"\0" * (5 * MiB)
    earlier_id = seed_crashed_upload(mock_s3, BUCKET, "obj", wrong_part_2, (1, 2))
    engine, source = engine_for(mock_s3, path)
    with source:
        result = engine.run(resume_upload_id=earlier_id)
    assert (result.parts_resumed, result.parts_sent) == (1, 3)
    assert sha256_object(mock_s3, BUCKET, "obj") == sha256_file(path)


def _list_part_checksums_as_aws_does(client, checksums: dict[int, str]) -> None:
    """moto's ListParts lists no part checksums; AWS lists each part's (here: the ones the seed sent)."""

    def add(parsed, **_):
        for part in parsed.get("Parts", []):
            part["ChecksumCRC32C"] = checksums[part["PartNumber"]]

    client.meta.events.register("after-call.s3.ListParts", add)


def test_a_stored_part_with_a_forged_crc_is_sent_again(mock_s3, tmp_path, caplog):
    """Part 1 in S3 holds other bytes with part 1's CRC32C (4 bytes adjusted) and the store lists that CRC,
    as AWS does: its MD5 ETag still shows the difference, so it is re-sent, never completed into the object."""
    path = make_file(tmp_path / "f", 12 * MiB)
    data = path.read_bytes()
    forged = forge_same_crc(data[: 5 * MiB], "CRC32C")
    earlier_id = seed_crashed_upload(mock_s3, BUCKET, "obj", forged + data[5 * MiB :], (1, 2))
    _list_part_checksums_as_aws_does(
        mock_s3, {n: checksum_b64("CRC32C", data[(n - 1) * 5 * MiB : n * 5 * MiB]) for n in (1, 2)}
    )
    engine, source = engine_for(mock_s3, path)
    with source, caplog.at_level(logging.WARNING):
        result = engine.run(resume_upload_id=earlier_id)
    assert (result.parts_resumed, result.parts_sent) == (1, 2)
    assert "Stored part 1 will be sent again: its bytes differ" in caplog.text
    assert sha256_object(mock_s3, BUCKET, "obj") == sha256_file(path)
    assert result.crc_only is None  # part 2 was proven by its MD5 ETag too


def test_upload_of_another_file_size_is_aborted_and_started_afresh(mock_s3, tmp_path):
    old = make_file(tmp_path / "old", 12 * MiB, seed=1)
    stale_id = seed_crashed_upload(mock_s3, BUCKET, "obj", old.read_bytes())
    new = make_file(tmp_path / "new", 3 * MiB, seed=2)
    engine, source = engine_for(mock_s3, new)
    with source:
        result = engine.run(resume_upload_id=stale_id)
    assert result.upload_id != stale_id
    assert result.parts_resumed == 0
    assert incomplete_uploads(mock_s3, BUCKET) == []
    assert sha256_object(mock_s3, BUCKET, "obj") == sha256_file(new)


def test_resume_of_vanished_upload_starts_afresh(mock_s3, tmp_path):
    path = make_file(tmp_path / "f", 6 * MiB)
    engine, source = engine_for(mock_s3, path)
    with source:
        result = engine.run(resume_upload_id="gone-long-ago")
    assert result.parts_sent == 2
    assert sha256_object(mock_s3, BUCKET, "obj") == sha256_file(path)


def test_file_changed_mid_upload_fails_and_leaves_nothing(mock_s3, tmp_path, put_part_hooks):
    path = make_file(tmp_path / "f", 16 * MiB)
    engine, source = engine_for(mock_s3, path, concurrency=1)

    def append_after_part_1(number: int) -> None:
        if number == 1:
            with path.open("ab") as f:
                f.write(b"late log line\n")

    put_part_hooks.after = append_after_part_1
    with source, pytest.raises(SourceChangedError, match="changed during the upload"):
        engine.run(keep_on_failure=True)  # a changed source is never kept for resume
    assert incomplete_uploads(mock_s3, BUCKET) == []
    assert "Contents" not in mock_s3.list_objects_v2(Bucket=BUCKET)


def test_cancel_stops_aborts_and_raises(mock_s3, tmp_path, put_part_hooks):
    path = make_file(tmp_path / "f", 30 * MiB)
    engine, source = engine_for(mock_s3, path, concurrency=2)
    first_part_sent, cancelled = threading.Event(), threading.Event()

    def hold_until_cancelled(number: int) -> None:  # no part is reported done before the cancel lands
        first_part_sent.set()
        cancelled.wait(30)

    def cancel() -> None:
        if first_part_sent.wait(30):
            engine.cancel()
        cancelled.set()

    put_part_hooks.after = hold_until_cancelled
    canceller = threading.Thread(target=cancel)
    canceller.start()
    with source, pytest.raises(UploadCancelledError):
        engine.run(keep_on_failure=True)  # a cancel always aborts
    canceller.join(30)
    assert first_part_sent.is_set()
    assert incomplete_uploads(mock_s3, BUCKET) == []
    assert "Contents" not in mock_s3.list_objects_v2(Bucket=BUCKET)


class GuardedClient:
    """A client whose S3 calls each take ``lock`` first, as urllib3's connection pool does, and are
    recorded as (name, operation, thread); gives up after 10 s, so that a deadlock fails instead of hanging."""

    def __init__(self, client, lock: threading.Lock, calls: list, name: str) -> None:
        self._client, self._lock, self._calls, self._name = client, lock, calls, name

    def __getattr__(self, attr):
        value = getattr(self._client, attr)
        if attr == "meta" or not callable(value):
            return value

        def call(*args, **kwargs):
            self._calls.append((self._name, attr, threading.current_thread().name))
            if not self._lock.acquire(timeout=10):
                raise RuntimeError(f"{attr} waited 10 s for a lock its own thread holds: deadlock")
            self._lock.release()
            return value(*args, **kwargs)

        return call


def test_cancel_does_no_network_io_and_aborts_through_its_own_client(mock_s3, tmp_path, put_part_hooks):
    """on_kill runs cancel() in the main thread's signal handler, maybe while that thread holds the
    connection pool's lock: cancel must not touch the client; the abort goes through abort_client in a
    thread, and run() aborts again with the main client once its workers stopped."""
    from tests.support.s3_proxy import wait_until

    path = make_file(tmp_path / "f", 30 * MiB)
    calls: list = []
    pool_lock = threading.Lock()
    source = FileSource(path)
    engine = FileUploadEngine(
        GuardedClient(mock_s3, pool_lock, calls, "main"),
        bucket=BUCKET,
        key="obj",
        source=source,
        plan=plan_parts(source.size, 5 * MiB),
        options=UploadOptions(concurrency=2, progress_interval=0),
        abort_client=GuardedClient(mock_s3, threading.Lock(), calls, "abort"),
    )
    first_part_sent, release = threading.Event(), threading.Event()

    def hold(number: int) -> None:
        first_part_sent.set()
        release.wait(10)

    put_part_hooks.after = hold
    outcome: list = []

    def run() -> None:
        try:
            engine.run()
        except BaseException as e:
            outcome.append(e)

    runner = threading.Thread(target=run)
    with source:
        runner.start()
        assert first_part_sent.wait(30)
        handler = threading.current_thread().name
        with pool_lock:  # the "signal handler" runs while its thread holds the pool's lock
            engine.cancel()
        assert [c for c in calls if c[2] == handler] == []  # not one request from the handler's thread
        release.set()
        runner.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], UploadCancelledError), outcome
    assert wait_until(lambda: ("abort", "abort_multipart_upload", "mpu-abort-on-cancel") in calls, timeout=30)
    assert ("main", "abort_multipart_upload", runner.name) in calls  # again, after the workers stopped
    assert incomplete_uploads(mock_s3, BUCKET) == []


def test_wrong_etag_from_store_is_an_integrity_error(mock_s3, tmp_path, monkeypatch):
    path = make_file(tmp_path / "f", 6 * MiB)
    engine, source = engine_for(mock_s3, path, checksum_algorithm=None)
    real = mock_s3.upload_part

    def lying_store(**kwargs):
        response = real(**kwargs)
        response["ETag"] = '"' + "0" * 32 + '"'
        return response

    monkeypatch.setattr(mock_s3, "upload_part", lying_store)
    with source, pytest.raises(IntegrityError, match="does not match the bytes sent"):
        engine.run()
    assert incomplete_uploads(mock_s3, BUCKET) == []


def test_missing_bucket_is_a_clear_error(mock_s3, tmp_path):
    path = make_file(tmp_path / "f", 10)
    source = FileSource(path)
    engine = FileUploadEngine(mock_s3, bucket="no-such-bucket", key="k", source=source, plan=plan_parts(10))
    with source, pytest.raises(S3UploadError, match="s3://no-such-bucket/k: NoSuchBucket"):
        engine.run()


def test_progress_lines_reach_the_log(mock_s3, tmp_path, caplog):
    path = make_file(tmp_path / "f", 11 * MiB)
    store_echoes_no_checksums(mock_s3)  # every part then carries its MD5, and the ETag is verified too
    engine, source = engine_for(mock_s3, path, concurrency=1)
    engine.log = logging.getLogger("test.engine")
    with caplog.at_level(logging.INFO, logger="test.engine"), source:
        engine.run()
    text = caplog.text
    assert "(100.0%)" in text and "MiB/s" in text and "ETA" in text
    assert "verified size, ETag" in text


def test_complete_whose_first_attempt_succeeded_is_recognised_by_its_etag(mock_s3, tmp_path, monkeypatch):
    """Real S3 answers a retried Complete with NoSuchUpload when the lost first attempt succeeded."""
    from botocore.exceptions import ClientError

    store_echoes_no_checksums(mock_s3)  # by its ETag: every part's MD5 is known
    path = make_file(tmp_path / "f", 11 * MiB)
    engine, source = engine_for(mock_s3, path, concurrency=1)
    real = mock_s3.complete_multipart_upload

    def lost_response(**kwargs):
        real(**kwargs)
        raise ClientError({"Error": {"Code": "NoSuchUpload", "Message": "gone"}}, "CompleteMultipartUpload")

    monkeypatch.setattr(mock_s3, "complete_multipart_upload", lost_response)
    with source:
        result = engine.run()
    assert result.etag.endswith("-3")
    assert sha256_object(mock_s3, BUCKET, "obj") == sha256_file(path)


def test_no_such_upload_at_complete_with_a_different_object_is_an_error(mock_s3, tmp_path, monkeypatch):
    from botocore.exceptions import ClientError

    path = make_file(tmp_path / "f", 11 * MiB)
    engine, source = engine_for(mock_s3, path, concurrency=1)

    def aborted_by_someone_else(**kwargs):
        raise ClientError({"Error": {"Code": "NoSuchUpload", "Message": "gone"}}, "CompleteMultipartUpload")

    monkeypatch.setattr(mock_s3, "complete_multipart_upload", aborted_by_someone_else)
    with source, pytest.raises(S3UploadError, match="NoSuchUpload"):
        engine.run()


def test_failure_right_after_create_still_aborts(mock_s3, tmp_path):
    """If recording the UploadId fails (XCom, task_state_store), the fresh upload must not be orphaned."""
    path = make_file(tmp_path / "f", 6 * MiB)
    engine, source = engine_for(mock_s3, path)

    def recording_fails(upload_id):
        raise RuntimeError("XCom backend down")

    engine.on_upload_started = recording_fails
    with source, pytest.raises(RuntimeError, match="XCom backend down"):
        engine.run()
    assert incomplete_uploads(mock_s3, BUCKET) == []


@pytest.mark.parametrize(
    ("max_buffer", "workers"),
    # A file's parts are read as the socket asks (sources/file_range.py): a part in flight holds one 1 MiB chunk,
    # so max_buffer_bytes no longer divides by the part size (it used to allow 2 and 1 workers here).
    [(12 * MiB, 8), (4 * MiB, 4)],
)
def test_file_parts_in_memory_stay_within_max_buffer_bytes(mock_s3, tmp_path, max_buffer, workers):
    path = make_file(tmp_path / "f", 30 * MiB)
    engine, source = engine_for(mock_s3, path, concurrency=8, max_buffer_bytes=max_buffer)
    with source:
        result = engine.run()
    assert engine.options.workers_for(range_footprint(5 * MiB)) == workers
    assert 0 < result.peak_buffer_bytes <= max_buffer
    assert result.peak_buffer_bytes <= workers * MiB  # one chunk per part in flight, never a whole part
    assert result.to_dict()["peak_buffer_bytes"] == result.peak_buffer_bytes


@pytest.mark.parametrize(
    ("reported", "outcome"),
    [
        ("whole", "FULL_OBJECT"),  # the store made the object FULL_OBJECT unasked: its CRC is the file's
        ("composite-value", "COMPOSITE"),  # the composite's value without "-N"
        # Neither, while the ETag (the file read again for its parts' MD5s) proves the bytes: the store computes
        # the checksum some other way; success, said so, and the checksum is not reported.
        ("AAAAAA==", None),
    ],
)
def test_an_unqualified_object_checksum_of_a_composite_upload_is_checked_not_ignored(
    mock_s3, tmp_path, monkeypatch, caplog, reported, outcome
):
    import base64

    import crc32c

    path = make_file(tmp_path / "f", 11 * MiB)
    data = path.read_bytes()
    crcs = b"".join(crc32c.crc32c(data[i : i + 5 * MiB]).to_bytes(4, "big") for i in range(0, len(data), 5 * MiB))
    values = {
        "whole": base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big")).decode(),
        "composite-value": base64.b64encode(crc32c.crc32c(crcs).to_bytes(4, "big")).decode(),
    }
    value = values.get(reported, reported)
    engine, source = engine_for(mock_s3, path, concurrency=1, checksum_type="COMPOSITE")
    real_complete, real_head = mock_s3.complete_multipart_upload, mock_s3.head_object

    def complete_without_checksum(**kwargs):
        return {k: v for k, v in real_complete(**kwargs).items() if not k.startswith("Checksum")}

    def head_reporting(**kwargs):
        head = {k: v for k, v in real_head(**kwargs).items() if not k.startswith("Checksum")}
        return {**head, "ChecksumCRC32C": value} if kwargs.get("ChecksumMode") == "ENABLED" else head

    monkeypatch.setattr(mock_s3, "complete_multipart_upload", complete_without_checksum)
    monkeypatch.setattr(mock_s3, "head_object", head_reporting)
    with source, caplog.at_level(logging.INFO):
        result = engine.run()
    if outcome is None:
        assert (result.checksum_type, result.checksum) == (None, None)
        assert "expected the composite" in caplog.text and "the object's ETag proves every part's bytes" in caplog.text
        assert "verified size, ETag (the parts' MD5s, read again from the source)" in caplog.text
        return
    assert (result.checksum_type, result.checksum) == (
        outcome,
        value if outcome == "FULL_OBJECT" else f"{value}-3",
    )
