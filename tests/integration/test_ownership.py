"""Whose upload is whose: the operator over HTTP against moto, each test trying to break one promise.

* an existing object is never overwritten unless asked (``replace=False`` on every try);
* another run's upload is never destroyed or written into;
* a retry of finished work succeeds without uploading;
* every try ends with its upload completed, aborted, or kept *and* recorded where the retry looks.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import pytest

from airflow_mpu_provider.multipart.errors import S3UploadError, UploadCancelledError
from airflow_mpu_provider.multipart.file_upload import FileUploadSequence
from airflow_mpu_provider.operators.multipart_upload import STATE_KEY, MultipartUploadOperator
from airflow_mpu_provider.version_compat import AIRFLOW_V_3_3_PLUS
from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.integration.conftest import BUCKET, FakeStateStore, FakeTaskInstance, upload_operator
from tests.support.s3_proxy import Fault
from tests.support.seed import seed_crashed_upload

pytestmark = pytest.mark.integration

needs_task_state_store = pytest.mark.skipif(not AIRFLOW_V_3_3_PLUS, reason="task_state_store needs Airflow >= 3.3")


operator = functools.partial(upload_operator, concurrency=1)


def no_retries(connection) -> str:
    """A connection whose client does not retry: one injected 500 fails the try."""
    return connection(config_kwargs={"retries": {"mode": "standard", "max_attempts": 0}})


def uploads_of(s3, key: str) -> list[str]:
    return [u["UploadId"] for u in incomplete_uploads(s3, BUCKET, key) if u["Key"] == key]


def abort_all(s3, key: str) -> None:
    for upload_id in uploads_of(s3, key):
        s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id)


def stranger_upload(s3, key: str, data: bytes, parts: int = 1) -> str:
    """An incomplete upload nobody recorded (another tool's, a leftover, a concurrent run's)."""
    return seed_crashed_upload(s3, BUCKET, key, data, range(1, parts + 1))


def aborted_ids(proxy) -> set[str | None]:
    return {r.upload_id for r in proxy.requests() if r.kind == "AbortMultipartUpload"}


# -- 1. replace=False never overwrites, whatever incomplete upload is lying around -------------------


@pytest.mark.parametrize("quiet_after", [0, 900], ids=["stranger-looks-adoptable", "stranger-looks-live"])
def test_replace_false_refuses_an_existing_object_even_with_a_strangers_upload_for_the_key(
    connection, proxy, s3, tmp_path, quiet_after
):
    key = "own/exists-with-stranger.bin"
    path = make_file(tmp_path / "f", 12 * MiB)
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"the backup of yesterday, keep it")
    stranger = stranger_upload(s3, key, path.read_bytes(), parts=2)  # even one that holds this file's parts
    proxy.reset_counts()
    try:
        with pytest.raises(S3UploadError, match="already exists; set replace=True") as info:
            operator(connection(), path, key, adopt_quiet_after=quiet_after).execute({"ti": FakeTaskInstance()})
        assert info.value.code == "ObjectExists"
        assert proxy.count("CreateMultipartUpload") == 0 and proxy.count("UploadPart") == 0
        assert proxy.count("CompleteMultipartUpload") == 0
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"the backup of yesterday, keep it"
        assert uploads_of(s3, key) == [stranger]  # the stranger's upload is not ours: left alone
        assert proxy.count("AbortMultipartUpload") == 0
    finally:
        abort_all(s3, key)
        s3.delete_object(Bucket=BUCKET, Key=key)


@pytest.mark.parametrize("checksum", ["CRC32C", None])
def test_replace_false_with_the_same_bytes_already_there_succeeds_without_uploading(
    connection, proxy, s3, tmp_path, caplog, capsys, checksum
):
    key = f"own/already-there-{checksum}.bin"
    path = make_file(tmp_path / "f", 13 * MiB)
    operator(connection(), path, key, checksum_algorithm=checksum).execute({})
    proxy.reset_counts()
    with caplog.at_level(logging.INFO):
        result = operator(connection(), path, key, checksum_algorithm=checksum).execute({})
    assert (result["parts_sent"], result["bytes_sent"], result["size"]) == (0, 0, 13 * MiB)
    assert proxy.count("CreateMultipartUpload") == 0 and proxy.count("UploadPart") == 0
    assert "already holds exactly" in caplog.text + capsys.readouterr().out
    # One byte different, same size: refused, nothing created.
    other = tmp_path / "g"
    other.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(S3UploadError, match="already exists.*differs from the file"):
        operator(connection(), other, key, checksum_algorithm=checksum).execute({})
    assert proxy.count("CreateMultipartUpload") == 0
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)


# -- 2. two runs racing on one key neither destroy nor corrupt each other --------------------------


class PausedRun:
    """An operator run in a thread that stops (its UploadPart request held by the proxy) after ``parts`` parts."""

    def __init__(self, name: str, proxy, op: MultipartUploadOperator, parts: int) -> None:
        self.name, self.proxy, self.op, self.parts = name, proxy, op, parts
        self.ti = FakeTaskInstance()
        self.paused, self.release, self.finished = threading.Event(), threading.Event(), threading.Event()
        self.result: dict | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"run-{name}")

    @property
    def upload_id(self) -> str | None:
        return self.ti.xcom.get("upload_id")

    def on_request(self, record) -> None:
        if record.kind != "UploadPart" or record.upload_id != self.upload_id or self.release.is_set():
            return
        mine = sum(r.kind == "UploadPart" and r.upload_id == self.upload_id for r in self.proxy.requests())
        if mine >= self.parts:
            self.paused.set()
            self.release.wait(120)  # holds this run's part in flight: the run is live, mid-upload

    def _run(self) -> None:
        try:
            self.result = self.op.execute({"ti": self.ti})
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            self.finished.set()

    def start_and_pause(self) -> None:
        self.thread.start()
        assert self.paused.wait(60), f"run {self.name} did not reach part {self.parts}: {self.error!r}"

    def finish(self) -> dict:
        self.release.set()
        self.thread.join(120)
        assert not self.thread.is_alive()
        assert self.error is None, f"run {self.name} failed: {self.error!r}"
        assert self.result is not None
        return self.result


@pytest.mark.parametrize("b_file", ["same file", "other size"])
@pytest.mark.parametrize("first_to_complete", ["B (started second)", "A (started first)"])
def test_two_runs_racing_on_one_key_never_destroy_or_corrupt_each_other(
    connection, proxy, s3, tmp_path, caplog, capsys, b_file, first_to_complete
):
    """Run A is live (mid-upload) when run B starts on its first try with nothing recorded, for the
    same key: B must leave A's upload alone (no abort, no parts written into it) and upload its own.
    Each completes a byte-identical object; the one completing last is what the key holds."""
    key = f"own/race-{b_file.replace(' ', '-')}-{first_to_complete[0]}.bin"
    a_path = make_file(tmp_path / "a", 26 * MiB, seed=1)
    b_path = a_path if b_file == "same file" else make_file(tmp_path / "b", 17 * MiB, seed=2)
    conn_id = connection()
    a = PausedRun("A", proxy, operator(conn_id, a_path, key, replace=True), parts=2)
    b = PausedRun("B", proxy, operator(conn_id, b_path, key, replace=True), parts=2)
    proxy.on_request = lambda record: (a.on_request(record), b.on_request(record))
    try:
        with caplog.at_level(logging.INFO):
            a.start_and_pause()
            if first_to_complete.startswith("B"):
                b.release.set()
                b.thread.start()
                b_result = b.finish()
                assert sha256_object(s3, BUCKET, key) == sha256_file(b_path)
                a_result = a.finish()
                last = a_path
            else:
                b.start_and_pause()
                a_result = a.finish()
                assert sha256_object(s3, BUCKET, key) == sha256_file(a_path)
                b_result = b.finish()
                last = b_path
    finally:
        a.release.set()
        b.release.set()
        proxy.on_request = None
    assert a_result["upload_id"] != b_result["upload_id"]  # never both in one upload
    assert b_result["parts_resumed"] == 0 and a_result["parts_resumed"] == 0
    assert not aborted_ids(proxy)  # nobody's upload was aborted
    assert "it may be live" in caplog.text + capsys.readouterr().out  # B saw A's upload and left it alone
    parts_into = {r.upload_id for r in proxy.requests() if r.kind == "UploadPart"}
    assert parts_into == {a_result["upload_id"], b_result["upload_id"]}
    assert proxy.count("CreateMultipartUpload") == 2
    for result in (a_result, b_result):  # no part was written into the other run's upload
        into = sum(r.kind == "UploadPart" and r.upload_id == result["upload_id"] for r in proxy.requests())
        assert into == result["parts"]
    assert sha256_object(s3, BUCKET, key) == sha256_file(last)
    assert uploads_of(s3, key) == []


@pytest.mark.parametrize("b_file", ["same file", "other file"])
def test_replace_false_race_the_later_completion_never_replaces_the_earlier_object(
    connection, proxy, s3, tmp_path, b_file
):
    """Both runs pass the existence check (the key is free) before either completes. The later
    Complete is conditional (IfNoneMatch="*"): with other bytes it fails and aborts its own upload,
    leaving the first object untouched; with the same bytes there is nothing to replace: success."""
    key = f"own/race-replace-false-{b_file.replace(' ', '-')}.bin"
    a_path = make_file(tmp_path / "a", 16 * MiB, seed=1)
    b_path = a_path if b_file == "same file" else make_file(tmp_path / "b", 16 * MiB, seed=2)
    conn_id = connection()
    a = PausedRun("A", proxy, operator(conn_id, a_path, key), parts=1)
    proxy.on_request = a.on_request
    try:
        a.start_and_pause()
        b_result = operator(conn_id, b_path, key).execute({"ti": FakeTaskInstance()})
        assert sha256_object(s3, BUCKET, key) == sha256_file(b_path)
        if b_file == "same file":
            a_result = a.finish()
            assert a_result["size"] == 16 * MiB
        else:
            a.release.set()
            a.thread.join(120)
            assert isinstance(a.error, S3UploadError) and a.error.code == "ObjectExists"
            assert "was not replaced" in str(a.error)
    finally:
        a.release.set()
        proxy.on_request = None
    assert sha256_object(s3, BUCKET, key) == sha256_file(b_path)  # the first object stands
    assert a.upload_id in aborted_ids(proxy) and b_result["upload_id"] not in aborted_ids(proxy)
    assert uploads_of(s3, key) == []


def test_a_quiet_found_upload_with_other_bytes_is_left_alone_never_aborted(connection, proxy, s3, tmp_path, caplog):
    """Quiet, fits the plan, but its stored part is another file's bytes: not adopted, not aborted."""
    key = "own/found-other-bytes.bin"
    other = make_file(tmp_path / "other", 12 * MiB, seed=7)
    stranger = stranger_upload(s3, key, other.read_bytes(), parts=1)
    path = make_file(tmp_path / "f", 12 * MiB, seed=8)
    proxy.reset_counts()
    try:
        with caplog.at_level(logging.WARNING):
            result = operator(connection(), path, key, adopt_quiet_after=0).execute({})
        assert result["upload_id"] != stranger and result["parts_resumed"] == 0
        assert uploads_of(s3, key) == [stranger]
        assert stranger not in aborted_ids(proxy)
        assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    finally:
        abort_all(s3, key)


def test_a_quiet_found_upload_of_this_file_is_adopted(connection, proxy, s3, tmp_path):
    key = "own/found-adopted.bin"
    path = make_file(tmp_path / "f", 17 * MiB)
    stranger = stranger_upload(s3, key, path.read_bytes(), parts=2)
    proxy.reset_counts()
    result = operator(connection(), path, key, adopt_quiet_after=0).execute({})
    assert result["upload_id"] == stranger and (result["parts_resumed"], result["parts_sent"]) == (2, 2)
    assert proxy.count("CreateMultipartUpload") == 0
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert uploads_of(s3, key) == []


# -- 3. a try killed after Complete is followed by a try that uploads nothing ---------------------


@pytest.mark.parametrize(
    "replace", [False, pytest.param(True, marks=needs_task_state_store, id="True-recorded-upload-gone")]
)
def test_try_killed_while_complete_is_in_flight_then_retry_succeeds_without_uploading(
    connection, proxy, s3, tmp_path, replace
):
    key = f"own/killed-at-complete-{replace}.bin"
    path = make_file(tmp_path / "f", 16 * MiB)
    store = FakeStateStore()
    first = operator(connection(), path, key, replace=replace, retries=1)

    def kill_during_complete(record) -> None:  # SIGTERM arrives while S3 is completing the object
        if record.kind == "CompleteMultipartUpload" and not first.hook.cancelled:
            first.on_kill()

    proxy.on_request = kill_during_complete
    with pytest.raises(UploadCancelledError, match="killed"):
        first.execute({"ti": FakeTaskInstance(try_number=1, max_tries=1), "task_state_store": store})
    proxy.on_request = None
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)  # the object did complete
    proxy.reset_counts()
    retry = operator(connection(), path, key, replace=replace, retries=1)
    result = retry.execute({"ti": FakeTaskInstance(try_number=2, max_tries=1), "task_state_store": store})
    assert (result["parts_sent"], result["bytes_sent"]) == (0, 0)
    assert proxy.count("CreateMultipartUpload") == 0 and proxy.count("UploadPart") == 0
    assert proxy.count("CompleteMultipartUpload") == 0
    assert STATE_KEY not in store.data
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert uploads_of(s3, key) == []


# -- 4. no orphans: every try ends its upload ---------------------------------------------------------


def test_resume_false_never_keeps_an_upload_for_a_retry(connection, proxy, s3, tmp_path):
    key = "own/resume-false.bin"
    path = make_file(tmp_path / "f", 16 * MiB)
    proxy.fail_nth("UploadPart", 2)
    with pytest.raises(S3UploadError):
        operator(no_retries(connection), path, key, resume=False, retries=3, adopt_quiet_after=0).execute(
            {"ti": FakeTaskInstance(try_number=1, max_tries=3), "task_state_store": FakeStateStore()}
        )
    assert uploads_of(s3, key) == []  # nobody would look for it: aborted


def test_without_task_state_store_an_upload_is_kept_only_if_the_retry_will_adopt_it(connection, proxy, s3, tmp_path):
    """Airflow < 3.3 (no record): the retry finds the upload only by listing, after adopt_quiet_after."""
    key = "own/no-store.bin"
    path = make_file(tmp_path / "f", 16 * MiB)
    proxy.fail_nth("UploadPart", 2)
    ti = FakeTaskInstance(try_number=1, max_tries=1)
    with pytest.raises(S3UploadError):  # the retry comes after 5 min, the upload is adoptable after 15: abort
        operator(no_retries(connection), path, key, retries=1).execute({"ti": ti})
    assert uploads_of(s3, key) == []
    proxy.clear_faults()
    proxy.fail_nth("UploadPart", 2)
    with pytest.raises(S3UploadError):  # the retry waits long enough: keep, and the retry adopts it
        operator(no_retries(connection), path, key, retries=1, adopt_quiet_after=0).execute({"ti": ti})
    assert len(uploads_of(s3, key)) == 1
    proxy.on_request = None
    proxy.clear_faults()
    result = operator(connection(), path, key, adopt_quiet_after=0).execute(
        {"ti": FakeTaskInstance(try_number=2, max_tries=1)}
    )
    assert result["parts_resumed"] == 1
    assert uploads_of(s3, key) == []


def _first_try_keeps_and_records(connection, proxy, s3, path, key, store) -> str:
    proxy.fail_nth("UploadPart", 2)
    with pytest.raises(S3UploadError):
        operator(no_retries(connection), path, key, retries=1).execute(
            {"ti": FakeTaskInstance(try_number=1, max_tries=1), "task_state_store": store}
        )
    proxy.on_request = None
    proxy.clear_faults()
    kept = uploads_of(s3, key)
    assert len(kept) == 1 and store.data[STATE_KEY]["upload_id"] == kept[0]
    proxy.reset_counts()  # what follows is the next try's
    return kept[0]


class KillingStore(FakeStateStore):
    """A task_state_store during whose read the task is killed (``kill`` is set by the test)."""

    kill: Callable[[], None] | None = None

    def get(self, key: str, default: Any = None) -> Any:
        value = super().get(key, default)
        if self.kill is not None:
            self.kill()
        return value


@needs_task_state_store
@pytest.mark.parametrize("phase", ["task_state_store read", "HeadObject", "ListParts", "before the engine starts"])
def test_kill_on_the_last_try_in_any_phase_aborts_the_earlier_tries_upload(
    connection, proxy, s3, tmp_path, monkeypatch, phase
):
    key = f"own/killed-{phase.replace(' ', '-')}.bin"
    path = make_file(tmp_path / "f", 16 * MiB)
    store = KillingStore()
    kept = _first_try_keeps_and_records(connection, proxy, s3, path, key, store)
    last = operator(connection(), path, key, retries=1)
    if phase == "task_state_store read":
        store.kill = last.on_kill
    elif phase == "before the engine starts":
        real = FileUploadSequence._make_engine

        def killed_then(self, *args):
            last.on_kill()
            return real(self, *args)

        monkeypatch.setattr(FileUploadSequence, "_make_engine", killed_then)  # the last step before it runs
    else:
        killed = threading.Event()

        def kill_once(record) -> None:  # once: on_kill's own abort lists parts too
            if record.kind == phase and not killed.is_set():
                killed.set()
                last.on_kill()

        proxy.on_request = kill_once
    try:
        with pytest.raises(UploadCancelledError):
            last.execute({"ti": FakeTaskInstance(try_number=2, max_tries=1), "task_state_store": store})
    finally:
        proxy.on_request = None
    assert kept in aborted_ids(proxy)
    assert uploads_of(s3, key) == []
    assert STATE_KEY not in store.data
    assert proxy.count("CreateMultipartUpload") == 0


@needs_task_state_store
def test_a_record_for_another_version_of_the_file_is_aborted(connection, proxy, s3, tmp_path):
    key = "own/other-version.bin"
    path = make_file(tmp_path / "f", 16 * MiB)
    store = FakeStateStore()
    kept = _first_try_keeps_and_records(connection, proxy, s3, path, key, store)
    make_file(path, 16 * MiB, seed=5)  # rewritten between the tries: another mtime
    result = operator(connection(), path, key, retries=1).execute(
        {"ti": FakeTaskInstance(try_number=2, max_tries=1), "task_state_store": store}
    )
    assert kept in aborted_ids(proxy) and result["upload_id"] != kept
    assert uploads_of(s3, key) == []


# -- 7. execution_timeout: a failure like any other -------------------------------------------------


def _timeout():
    try:
        from airflow.sdk.execution_time.timeout import timeout
    except ImportError:  # pragma: no cover
        from airflow.utils.timeout import timeout  # type: ignore[no-redef]
    return timeout


@pytest.mark.parametrize("retry_follows", [True, False])
def test_execution_timeout_keeps_and_records_for_the_retry_and_on_kill_after_it_aborts_nothing(
    connection, proxy, s3, tmp_path, retry_follows
):
    """As Airflow's task runner does it: AirflowTaskTimeout (SIGALRM) raised inside execute(), then
    on_kill() once execute() has ended. With a retry to come the upload is kept and recorded (and
    on_kill leaves it alone), and the retry resumes it; on the last try it is aborted."""
    key = f"own/timeout-{retry_follows}.bin"
    path = make_file(tmp_path / "f", 21 * MiB)
    store = FakeStateStore()
    max_tries = 1 if retry_follows else 0
    op = operator(connection(), path, key, retries=max_tries, adopt_quiet_after=0)

    expired = threading.Event()

    def time_out_after_a_part(record) -> None:
        if record.kind == "UploadPart" and record.status == 200 and not expired.is_set():
            expired.set()
            os.kill(os.getpid(), signal.SIGALRM)  # the timer expiring (once), delivered to the main thread

    proxy.on_request = time_out_after_a_part
    context = {"ti": FakeTaskInstance(try_number=1, max_tries=max_tries), "task_state_store": store}
    with pytest.raises(BaseException) as info, _timeout()(3600):
        op.execute(context)
    proxy.on_request = None
    assert type(info.value).__name__ == "AirflowTaskTimeout"
    op.on_kill()  # what the task runner does after the timeout
    if not retry_follows:
        assert uploads_of(s3, key) == []
        return
    kept = uploads_of(s3, key)
    assert len(kept) == 1
    if AIRFLOW_V_3_3_PLUS:
        assert store.data[STATE_KEY]["upload_id"] == kept[0]
    proxy.reset_counts()
    result = operator(connection(), path, key, retries=1, adopt_quiet_after=0).execute(
        {"ti": FakeTaskInstance(try_number=2, max_tries=1), "task_state_store": store}
    )
    assert result["upload_id"] == kept[0] and result["parts_resumed"] >= 1
    assert proxy.count("CreateMultipartUpload") == 0
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert uploads_of(s3, key) == []


# -- 5. Complete's lost answer on a store that echoes checksums -----------------------------------


@pytest.mark.parametrize(
    ("checksum", "checksum_type", "proof"),
    [("SHA256", None, "composite"), ("CRC32", "COMPOSITE", "composite"), ("CRC32", None, "full-object")],
)
def test_lost_complete_answer_is_recognised_by_size_and_composite_checksum_when_the_store_echoes_checksums(
    connection, proxy, s3, tmp_path, caplog, capsys, checksum, checksum_type, proof
):
    """AWS echoes part checksums, so after the first part no Content-MD5 is sent and no multipart ETag
    can be expected. moto echoes an ``x-amz-checksum-*`` header only when the request also names the
    algorithm (``x-amz-sdk-checksum-algorithm``), which the engine sends: moto answers as AWS does.
    The first Complete succeeds but its answer is lost (a 200 carrying an error, which botocore
    retries); the retry is answered NoSuchUpload, as AWS answers a Complete that already happened.
    (CRC32C is not used here: moto computes it with zlib's CRC32 unless the crc32c package is there.)
    A FULL_OBJECT upload (CRC32's default) is recognised by its whole-file checksum instead."""
    key = f"own/lost-complete-{checksum}-{checksum_type}.bin"
    path = make_file(tmp_path / "f", 16 * MiB)
    # Payload signing set, as AWS over HTTPS needs none: over plain HTTP every part would carry an MD5
    # otherwise (it spares the SHA-256 payload signature), and the multipart ETag would be expected.
    conn = connection(config_kwargs={"s3": {"payload_signing_enabled": True}})
    op = operator(conn, path, key, checksum_algorithm=checksum, checksum_type=checksum_type)
    proxy.add_fault(Fault(kind="CompleteMultipartUpload", action="error_200", code="InternalError", times=1))
    proxy.add_fault(Fault(kind="CompleteMultipartUpload", action="error", status=404, code="NoSuchUpload", times=1))
    with caplog.at_level(logging.INFO):
        result = op.execute({})
    parts = [r for r in proxy.requests() if r.kind == "UploadPart"]
    without_md5 = [r for r in parts if "content-md5" not in {h.lower() for h in r.headers}]
    assert without_md5, "the store was not taken for one that echoes checksums"
    assert proxy.count("CompleteMultipartUpload") == 2
    assert f"matches (size and {checksum} {proof} checksum)" in caplog.text + capsys.readouterr().out
    assert result["size"] == 16 * MiB
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert uploads_of(s3, key) == []
