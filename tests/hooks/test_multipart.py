"""S3MultipartHook: the connection's settings under our tuning, and the janitor usable without an operator."""

from __future__ import annotations

import logging
import threading

import pytest

from airflow_mpu_provider import get_provider_info
from airflow_mpu_provider.hooks.multipart import UPLOAD_RETRIES, S3MultipartHook
from airflow_mpu_provider.multipart import stale
from airflow_mpu_provider.multipart.errors import CommandFailedError, UploadCancelledError
from tests.conftest import incomplete_uploads

CONNECTION = (
    '{"conn_type": "aws", "extra": {"region_name": "eu-west-1", "endpoint_url": "http://127.0.0.1:9", '
    '"config_kwargs": {"connect_timeout": 7, "max_pool_connections": 2, "retries": {"max_attempts": 3}}}}'
)


@pytest.fixture
def hook(monkeypatch) -> S3MultipartHook:
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", CONNECTION)
    return S3MultipartHook()


def test_the_hook_is_an_s3hook_and_is_registered_with_the_provider():
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    assert issubclass(S3MultipartHook, S3Hook)
    modules = [m for entry in get_provider_info()["hooks"] for m in entry["python-modules"]]
    assert "airflow_mpu_provider.hooks.multipart" in modules


def test_upload_client_keeps_the_connection_settings_but_never_a_pool_too_small_for_the_workers(hook):
    client = hook.get_upload_client(workers=16)
    config = client.meta.config
    assert (client.meta.endpoint_url, client.meta.region_name) == ("http://127.0.0.1:9", "eu-west-1")
    assert config.connect_timeout == 7  # the connection's config_kwargs win...
    assert config.retries["total_max_attempts"] == 4  # 3 retries
    assert config.max_pool_connections >= 17  # ...except a pool the parts would queue for
    assert config.tcp_keepalive is True


def test_upload_client_defaults_apply_where_the_connection_says_nothing(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", '{"conn_type": "aws", "extra": {"region_name": "eu-west-1"}}')
    config = S3MultipartHook().get_upload_client(workers=8).meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": UPLOAD_RETRIES + 1}
    assert config.max_pool_connections == 12


def test_without_a_checksum_algorithm_botocore_adds_none_either(hook):
    assert hook.get_upload_client(checksum_algorithm=None).meta.config.request_checksum_calculation == "when_required"
    default = hook.get_upload_client().meta.config.request_checksum_calculation
    assert default != "when_required" or default is None


def test_cancel_stops_a_running_sweep_before_its_next_upload(mock_s3, monkeypatch):
    """A @task calling the hook can hand ``hook.cancel`` to its own signal handling."""
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 6, 1, tzinfo=UTC)
    monkeypatch.setattr(stale, "_utcnow", lambda: now)
    keys = ["old/a", "old/b"]
    for key in keys:
        mock_s3.create_multipart_upload(Bucket="test-bucket", Key=key)  # moto dates them 2010: stale
    hook = S3MultipartHook(aws_conn_id=None)
    monkeypatch.setattr(S3MultipartHook, "get_conn", lambda self: mock_s3)
    first_abort_done = threading.Event()
    original = mock_s3.abort_multipart_upload

    def abort_then_cancel(**kwargs):
        response = original(**kwargs)
        if not first_abort_done.is_set():
            first_abort_done.set()
            hook.cancel()  # as a signal handler would, while the sweep is between uploads
        return response

    monkeypatch.setattr(mock_s3, "abort_multipart_upload", abort_then_cancel)
    with pytest.raises(UploadCancelledError, match="after handling 1 of 2"):
        hook.abort_stale_uploads("test-bucket", "old/", timedelta(days=1))
    assert len(incomplete_uploads(mock_s3, "test-bucket", "old/")) == 1
    for upload in incomplete_uploads(mock_s3, "test-bucket", "old/"):
        original(Bucket="test-bucket", Key=upload["Key"], UploadId=upload["UploadId"])


@pytest.mark.parametrize("quick", [False, True])
def test_an_upload_named_by_its_upload_id_is_aborted_and_made_sure_gone(mock_s3, monkeypatch, quick):
    """From a script with an UploadId (the operator's XCom ``upload_id``): ``upload_handle`` then
    ``abort_upload``, through the upload client or the abort client (``quick``, for a kill's thread)."""
    ours = mock_s3.create_multipart_upload(Bucket="test-bucket", Key="dump/a")["UploadId"]
    other = mock_s3.create_multipart_upload(Bucket="test-bucket", Key="dump/a")["UploadId"]
    monkeypatch.setattr(S3MultipartHook, "get_conn", lambda self: mock_s3)
    monkeypatch.setattr(S3MultipartHook, "get_abort_client", lambda self: mock_s3)
    hook = S3MultipartHook(aws_conn_id=None)
    upload = hook.upload_handle("test-bucket", "dump/a", ours)
    assert (upload.bucket, upload.key, upload.upload_id) == ("test-bucket", "dump/a", ours)
    hook.abort_upload(upload, quick=quick)
    assert [u["UploadId"] for u in incomplete_uploads(mock_s3, "test-bucket", "dump/")] == [other]
    again = hook.upload_handle("test-bucket", "dump/a", ours)
    hook.abort_upload(again)  # already gone: what an abort wants, not an error
    assert again.aborted


def test_the_operators_make_no_s3_call_of_their_own():
    """Operators are Airflow glue: every S3 call goes through the hook (or the engine it runs)."""
    import re
    from pathlib import Path

    import airflow_mpu_provider.operators as operators

    calls = re.compile(
        r"client\.|head_object|list_parts|get_object|\.abort\(|MultipartUpload\(|compare_object|find_adoptable"
    )
    for source in Path(operators.__file__).parent.glob("*.py"):
        found = [line for line in source.read_text().splitlines() if calls.search(line)]
        assert found == [], f"{source.name} calls S3 itself: {found}"


def test_cancel_from_a_signal_handler_never_deadlocks_on_the_thread_it_interrupts(hook):
    """A signal handler runs on the main thread, possibly while that thread registers a stopper (holding
    the hook's lock): cancel must still get through."""
    stopped = threading.Event()

    def interrupted_while_registering() -> None:
        with hook.cancelling(stopped.set), hook._cancel._lock:  # the handler lands inside the lock
            hook.cancel()

    thread = threading.Thread(target=interrupted_while_registering, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "cancel deadlocked on the lock its own thread held"
    assert stopped.is_set() and hook.cancelled


# -- how a command is logged ------------------------------------------------------------------------


def test_a_command_is_named_by_its_program_and_logged_whole_only_at_debug_through_the_masker(hook, monkeypatch, caplog):
    """Issue #20: the streamed command was logged whole, multi-line, with the credentials inlined in it."""
    from airflow_mpu_provider.version_compat import secrets_masker

    task_log = logging.getLogger("tests.hook.command")  # caplog does not see the task SDK's structlog logger
    monkeypatch.setattr(S3MultipartHook, "log", property(lambda self: task_log))
    caplog.set_level("DEBUG", logger="tests.hook.command")
    command = "MPU_TEST_TOKEN=tok-5f1e printf '%s\\n' \\\n  'postgresql://app:pw-9c2d@db/app' | cat; exit 3"
    with pytest.raises(CommandFailedError) as failed, hook.command_source(command) as source:
        assert source.description == "the output of `printf ...`"  # what lineage names, and the engine logs
        assert source.read(1000) == b"postgresql://app:pw-9c2d@db/app\n"
        source.finish()
    assert str(failed.value).startswith("`printf ...` exited with status 3")
    (debug,) = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert "printf" in debug and "tok-5f1e" not in debug and "pw-9c2d" not in debug and "***" in debug
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG and "printf '" in r.getMessage()]
    redact, _ = secrets_masker()
    # Registered with the masker, so that anything else that logs them (stderr echoing the URL) is masked.
    assert redact("token tok-5f1e, password pw-9c2d") == "token ***, password ***"


def test_program_names_skip_assignments_and_paths():
    from airflow_mpu_provider.multipart.sources.command import command_label, program_name

    assert program_name("PGPASSWORD=s3cret /usr/bin/pg_dump -h db app | gzip") == "pg_dump"
    assert program_name("A=1") == "command" and command_label("true") == "`true`"
    assert program_name("(head -c 3 /dev/zero; sleep 1) & exit 0") == "head"
    assert command_label("pg_dump app") == "`pg_dump ...`"


def test_no_public_hook_method_takes_a_client():
    """The hook owns its clients: callers never hand it one (the engine's sequences take the hook's)."""
    import inspect

    own = {name: member for name, member in vars(S3MultipartHook).items() if not name.startswith("_")}
    takes_client = [
        name for name, member in own.items() if callable(member) and "client" in inspect.signature(member).parameters
    ]
    assert takes_client == []
    assert {"upload_file", "upload_stream", "upload_command", "object_matches", "abort_stale_uploads", "cancel"} <= set(
        own
    )
