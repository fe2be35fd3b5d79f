"""S3MultipartHook against moto's S3 server over HTTP, through an Airflow connection and the counting proxy.

What a ``@task`` function or a script gets from the hook: the operator's upload (same result, same
options), its ownership rules (resume only what is verifiably not live, ``replace=False`` checked
against the object, abort what it created on failure), streams and commands, and a cancel that works
from another thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
from datetime import timedelta

import pytest

from airflow_mpu_provider.hooks.multipart import S3MultipartHook
from airflow_mpu_provider.multipart.errors import CommandFailedError, S3UploadError, UploadCancelledError
from airflow_mpu_provider.multipart.result import UploadResult
from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.integration.conftest import BUCKET
from tests.support.s3_proxy import Fault
from tests.support.seed import seed_crashed_upload

PART = 5 * MiB


@pytest.fixture
def hook(connection) -> S3MultipartHook:
    return S3MultipartHook(aws_conn_id=connection())


def abort_all(s3, key: str) -> None:
    for upload in incomplete_uploads(s3, BUCKET, key):
        s3.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])


def test_upload_file_returns_the_operators_result_and_applies_its_options(hook, proxy, s3, tmp_path):
    path = make_file(tmp_path / "f", 12 * MiB + 3)
    key = "hook/file.bin"
    result = hook.upload_file(
        path,
        f"s3://{BUCKET}/{key}",
        part_size=PART,
        concurrency=2,
        storage_class="STANDARD_IA",
        tags={"team": "data"},
        metadata={"source": "hook"},
    )
    assert set(result) == {f.name for f in dataclasses.fields(UploadResult)}
    assert (result["bucket"], result["key"], result["size"], result["parts"]) == (BUCKET, key, 12 * MiB + 3, 3)
    assert result["parts_sent"] == 3 and result["bytes_resumed"] == 0
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["StorageClass"] == "STANDARD_IA" and head["Metadata"] == {"source": "hook"}
    assert s3.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"] == [{"Key": "team", "Value": "data"}]
    assert proxy.count("UploadPart") == 3
    assert incomplete_uploads(s3, BUCKET, key) == []


def test_unknown_or_invalid_options_are_refused_before_any_request(hook, proxy, tmp_path):
    path = make_file(tmp_path / "f", 10)
    with pytest.raises(TypeError, match="unknown upload options \\['colour'\\]"):
        hook.upload_file(path, "hook/never.bin", BUCKET, colour="blue")
    with pytest.raises(ValueError, match="concurrency must be a whole number"):
        hook.upload_file(path, "hook/never.bin", BUCKET, concurrency=2.0)
    with pytest.raises(ValueError, match="not both"):
        hook.upload_file(path, "hook/never.bin", BUCKET, encrypt=True, sse_kms_key_id="alias/k")
    with pytest.raises(ValueError, match="no bucket"):
        hook.upload_file(path, "hook/never.bin")
    assert proxy.requests() == []


def test_upload_file_resumes_the_upload_a_killed_process_left(hook, proxy, s3, tmp_path):
    """A crashed uploader left parts 1 and 2; once the upload is quiet (adopt_quiet_after=0 here) the
    hook adopts it, verifies the stored parts against the file and sends only part 3."""
    path = make_file(tmp_path / "f", 12 * MiB, seed=7)
    key = "hook/resumed.bin"
    crashed = seed_crashed_upload(s3, BUCKET, key, path.read_bytes(), parts=(1, 2), part_size=PART)
    result = hook.upload_file(path, key, BUCKET, part_size=PART, adopt_quiet_after=0)
    assert result["upload_id"] == crashed
    assert (result["parts_resumed"], result["parts_sent"]) == (2, 1)
    assert proxy.count("UploadPart") == 1 and proxy.count("CreateMultipartUpload") == 0
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert incomplete_uploads(s3, BUCKET, key) == []


def test_a_found_upload_that_may_be_live_is_left_alone(hook, proxy, s3, tmp_path):
    """Another run's young upload of the key (default adopt_quiet_after: 15 minutes) is neither adopted
    nor aborted: the hook uploads into one of its own."""
    path = make_file(tmp_path / "f", 12 * MiB, seed=8)
    key = "hook/live.bin"
    live = seed_crashed_upload(s3, BUCKET, key, path.read_bytes(), parts=(1,), part_size=PART)
    try:
        result = hook.upload_file(path, key, BUCKET, part_size=PART)
        assert result["upload_id"] != live and result["parts_resumed"] == 0
        assert [u["UploadId"] for u in incomplete_uploads(s3, BUCKET, key)] == [live]
        assert proxy.count("AbortMultipartUpload") == 0
        assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    finally:
        abort_all(s3, key)


def test_resume_false_never_adopts(hook, proxy, s3, tmp_path):
    path = make_file(tmp_path / "f", 12 * MiB, seed=9)
    key = "hook/no-resume.bin"
    found = seed_crashed_upload(s3, BUCKET, key, path.read_bytes(), parts=(1,), part_size=PART)
    try:
        result = hook.upload_file(path, key, BUCKET, part_size=PART, resume=False, adopt_quiet_after=0)
        assert result["upload_id"] != found and proxy.count("ListMultipartUploads") == 0
    finally:
        abort_all(s3, key)


def test_replace_false_refuses_another_object_before_anything_is_created(hook, proxy, s3, tmp_path):
    key = "hook/taken.bin"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"someone else's bytes")
    path = make_file(tmp_path / "f", 6 * MiB)
    with pytest.raises(S3UploadError, match="already exists; set replace=True") as info:
        hook.upload_file(path, key, BUCKET)
    assert info.value.code == "ObjectExists"
    assert proxy.count("CreateMultipartUpload") == 0
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"someone else's bytes"
    result = hook.upload_file(path, key, BUCKET, replace=True, part_size=PART)
    assert result["size"] == 6 * MiB and sha256_object(s3, BUCKET, key) == sha256_file(path)


def test_replace_false_with_the_files_bytes_already_there_sends_nothing(hook, proxy, s3, tmp_path):
    path = make_file(tmp_path / "f", 11 * MiB, seed=3)
    key = "hook/idempotent.bin"
    first = hook.upload_file(path, key, BUCKET, part_size=PART)
    proxy.reset_counts()
    again = hook.upload_file(path, key, BUCKET, part_size=PART)
    assert again["bytes_sent"] == 0 and again["etag"] == first["etag"]
    assert proxy.count("CreateMultipartUpload") == 0 and proxy.count("UploadPart") == 0


def test_object_matches_only_the_exact_bytes(hook, s3, tmp_path):
    path = make_file(tmp_path / "f", 11 * MiB, seed=4)
    key = "hook/matches.bin"
    assert not hook.object_matches(path, key, BUCKET)  # nothing there yet
    hook.upload_file(path, f"s3://{BUCKET}/{key}", part_size=PART)
    assert hook.object_matches(path, f"s3://{BUCKET}/{key}")
    other = make_file(tmp_path / "g", 11 * MiB, seed=5)  # same size, other bytes
    assert not hook.object_matches(other, key, BUCKET)
    shorter = make_file(tmp_path / "h", 11 * MiB - 1, seed=4)
    assert not hook.object_matches(shorter, key, BUCKET)


@pytest.mark.parametrize("kind", ["readable", "iterable"])
def test_upload_stream_uploads_a_readable_or_chunks_of_any_size(hook, s3, kind):
    data = make_bytes(13 * MiB + 11)
    key = f"hook/stream-{kind}.bin"
    if kind == "readable":
        stream = io.BufferedReader(io.BytesIO(data), buffer_size=3 * MiB)
    else:
        stream = (data[i : i + 1_000_003] for i in range(0, len(data), 1_000_003))  # chunks cross parts
    result = hook.upload_stream(stream, key, BUCKET, part_size=PART, equal_parts=True)
    assert result["size"] == len(data) and result["parts"] == 3
    assert sha256_object(s3, BUCKET, key) == hashlib.sha256(data).hexdigest()
    assert incomplete_uploads(s3, BUCKET, key) == []


def test_upload_stream_refuses_an_existing_object_with_replace_false(hook, proxy, s3):
    key = "hook/stream-taken.bin"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    with pytest.raises(S3UploadError, match="already exists"):
        hook.upload_stream(io.BytesIO(b"y" * 10), key, BUCKET)
    assert proxy.count("CreateMultipartUpload") == 0


def test_a_failing_stream_aborts_its_upload(hook, s3):
    key = "hook/stream-fails.bin"

    def chunks():
        yield b"z" * (6 * MiB)  # one part goes out...
        raise OSError("the producer died")

    with pytest.raises(OSError, match="the producer died"):
        hook.upload_stream(chunks(), key, BUCKET, part_size=PART)
    assert incomplete_uploads(s3, BUCKET, key) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=key)


def test_upload_command_uploads_its_output_and_a_failure_aborts(hook, s3, tmp_path):
    path = make_file(tmp_path / "f", 12 * MiB, seed=6)
    key = "hook/command.bin"
    result = hook.upload_command(f"cat '{path}'", key, BUCKET, part_size=PART)
    assert result["size"] == 12 * MiB
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    with pytest.raises(CommandFailedError, match="exited with status 3"):
        hook.upload_command(f"cat '{path}'; exit 3", "hook/command-fails.bin", BUCKET, part_size=PART)
    assert incomplete_uploads(s3, BUCKET, "hook/command") == []


def test_upload_command_cut_short_by_its_timeout_aborts_even_when_bash_exited_0(hook, proxy, s3):
    """Issue #20: bash exits 0 at once; the timeout kills the writer of its group mid-output."""
    key = "hook/command-timeout.bin"
    command = "(head -c 300000 /dev/zero; sleep 30; head -c 300000 /dev/zero) & exit 0"
    with pytest.raises(CommandFailedError, match="timed out after 1 s"):
        hook.upload_command(command, key, BUCKET, part_size=PART, command_timeout=1)
    assert proxy.count("CompleteMultipartUpload") == 0
    assert proxy.count("AbortMultipartUpload") >= 1
    assert incomplete_uploads(s3, BUCKET, key) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=key)


def test_cancel_from_another_thread_stops_a_running_upload_and_aborts_it(hook, proxy, s3, tmp_path):
    """What a script's own signal handler does: ``hook.cancel()`` while ``upload_file`` runs in another
    thread; the upload raises UploadCancelledError and leaves no upload behind."""
    path = make_file(tmp_path / "f", 20 * MiB)
    key = "hook/cancelled.bin"
    proxy.add_fault(Fault("UploadPart", "throttle", rate=256 * 1024))  # 20 s a part: still sending when cancelled
    outcome: list[BaseException | dict] = []

    def upload() -> None:
        try:
            outcome.append(hook.upload_file(path, key, BUCKET, part_size=PART, concurrency=2))
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=upload, name="hook-upload")
    worker.start()
    try:
        assert proxy.wait_in_flight("UploadPart", at_least=1, timeout=60), "no part was ever sent"
        hook.cancel()
    finally:
        worker.join(120)
    assert not worker.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], UploadCancelledError), outcome
    assert proxy.count("AbortMultipartUpload") >= 1
    assert incomplete_uploads(s3, BUCKET, key) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=key)


def test_cancel_kills_a_running_command_and_aborts(hook, proxy, s3):
    key = "hook/cancelled-command.bin"
    outcome: list[BaseException | dict] = []

    def upload() -> None:
        try:
            # 6 MiB (one part is sent), then the command hangs until it is killed
            outcome.append(hook.upload_command("head -c 6291456 /dev/zero; sleep 600", key, BUCKET, part_size=PART))
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=upload, name="hook-command")
    worker.start()
    try:
        assert wait_for(lambda: proxy.count("UploadPart") + proxy.in_flight("UploadPart") >= 1), "no part was sent"
        hook.cancel()
    finally:
        worker.join(120)
    assert not worker.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], UploadCancelledError | CommandFailedError), outcome
    assert incomplete_uploads(s3, BUCKET, key) == []


def test_a_cancelled_hook_starts_nothing_more(hook, proxy, tmp_path):
    hook.cancel()
    with pytest.raises(UploadCancelledError):
        hook.upload_file(make_file(tmp_path / "f", 6 * MiB), "hook/after-cancel.bin", BUCKET, replace=True)
    assert proxy.count("CreateMultipartUpload") == 0


def wait_for(condition, timeout: float = 60.0) -> bool:
    """Poll ``condition`` until it holds or a generous deadline passes (never a sleep standing in for it)."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.05)
    return True


def make_bytes(size: int) -> bytes:
    import random

    return random.Random(size).randbytes(size)


def test_timedelta_adopt_quiet_after_is_accepted(hook, s3, tmp_path):
    path = make_file(tmp_path / "f", 6 * MiB, seed=10)
    result = hook.upload_file(path, "hook/quiet.bin", BUCKET, adopt_quiet_after=timedelta(minutes=1))
    assert result["size"] == 6 * MiB


def test_a_refused_key_never_starts_the_command(hook, proxy, s3, tmp_path):
    """replace=False and a bad part size are checked before the command runs: nothing is produced for nothing."""
    key = "hook/command-taken.bin"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    marker = tmp_path / "ran"
    with pytest.raises(S3UploadError, match="already exists"):
        hook.upload_command(f"touch '{marker}'", key, BUCKET)
    with pytest.raises(ValueError, match="part_size"):
        hook.upload_command(f"touch '{marker}'", "hook/command-small-parts.bin", BUCKET, part_size=1024)
    assert not marker.exists()
    assert proxy.count("CreateMultipartUpload") == 0


def test_a_sigkilled_scripts_upload_is_resumed_by_the_next_run(connection, proxy, s3, tmp_path):
    """A script calling ``upload_file`` is SIGKILLed after its first part was stored (nothing in it can
    run); the next run finds the upload with ListMultipartUploads and, once it is quiet, sends only the rest."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    conn_id = connection()
    path = make_file(tmp_path / "f", 20 * MiB, seed=11)
    key = "hook/killed-script.bin"
    script = (
        "import sys\n"
        "from airflow_mpu_provider.hooks.multipart import S3MultipartHook\n"
        f"S3MultipartHook(aws_conn_id={conn_id!r}).upload_file({str(path)!r}, {key!r}, {BUCKET!r}, "
        f"part_size={PART}, concurrency=1)\n"
    )
    proxy.add_fault(Fault("UploadPart", "throttle", rate=1024 * 1024))  # 5 s a part: killed mid-upload
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    process = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        assert wait_for(lambda: proxy.count("UploadPart", status=200) >= 1, timeout=120), "no part was stored"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    proxy.clear_faults()
    [left] = incomplete_uploads(s3, BUCKET, key)  # the killed run could not abort it
    try:
        result = hook_for(conn_id).upload_file(path, key, BUCKET, part_size=PART, adopt_quiet_after=0)
        assert result["upload_id"] == left["UploadId"]
        assert result["parts_resumed"] >= 1 and result["parts_resumed"] + result["parts_sent"] == 4
        assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    finally:
        abort_all(s3, key)


def hook_for(conn_id: str) -> S3MultipartHook:
    return S3MultipartHook(aws_conn_id=conn_id)


def test_upload_file_pauses_when_its_window_closes_and_the_next_call_resumes_it(
    hook, proxy, s3, tmp_path, monkeypatch, put_part_hooks
):
    """A script's window (Europe/Berlin): closed at the start, nothing is created; closing mid-upload, the
    call raises UploadPaused with the upload kept; the next call (resume_upload_id) sends only the rest."""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from airflow_mpu_provider.multipart import schedule
    from airflow_mpu_provider.multipart.schedule import UploadPaused

    berlin = ZoneInfo("Europe/Berlin")
    clock = {"at": datetime(2026, 12, 8, 12, 0, tzinfo=berlin)}
    monkeypatch.setattr(schedule, "_utc_now", lambda: clock["at"].astimezone(UTC))
    path = make_file(tmp_path / "f", 16 * MiB, seed=3)
    key = "hook/windowed.bin"
    window = {"upload_window": "22:00-06:00", "window_timezone": "Europe/Berlin", "part_size": PART}
    with pytest.raises(UploadPaused, match="Outside the upload window") as outside:
        hook.upload_file(path, key, BUCKET, concurrency=1, **window)
    assert outside.value.resumes_at == datetime(2026, 12, 8, 22, 0, tzinfo=berlin)
    assert proxy.count("CreateMultipartUpload") == 0

    clock["at"] = datetime(2026, 12, 8, 23, 0, tzinfo=berlin)

    def close_during_part_2(number: int) -> None:
        if number == 2:
            clock["at"] = datetime(2026, 12, 9, 6, 0, tzinfo=berlin)

    put_part_hooks.before = close_during_part_2
    with pytest.raises(UploadPaused) as paused:
        hook.upload_file(path, key, BUCKET, concurrency=1, **window)
    assert paused.value.stored_parts == 2 and proxy.count("UploadPart") == 2
    assert [u["UploadId"] for u in incomplete_uploads(s3, BUCKET, key)] == [paused.value.upload_id]

    put_part_hooks.clear()
    clock["at"] = datetime(2026, 12, 9, 22, 30, tzinfo=berlin)
    result = hook.upload_file(path, key, BUCKET, resume_upload_id=paused.value.upload_id, **window)
    assert (result["upload_id"], result["parts_resumed"], result["parts_sent"]) == (paused.value.upload_id, 2, 2)
    assert proxy.count("UploadPart") == 4  # 2 + 2: nothing sent twice
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert incomplete_uploads(s3, BUCKET, key) == []


def test_windows_are_refused_for_streams_and_commands_before_any_request(hook, proxy):
    from airflow_mpu_provider.multipart.errors import InvalidUploadRequest

    with pytest.raises(InvalidUploadRequest, match="files only"):
        hook.upload_stream(io.BytesIO(b"x"), "hook/never.bin", BUCKET, upload_window="22:00-06:00")
    with pytest.raises(InvalidUploadRequest, match="files only"):
        hook.upload_command("echo x", "hook/never.bin", BUCKET, finish_by="06:00")
    assert proxy.requests() == []
