"""Unit tests of the operator's Airflow glue (no S3 server: moto in-process where S3 is needed)."""

from __future__ import annotations

import threading
from datetime import timedelta
from types import SimpleNamespace

import pytest

from airflow_mpu_provider import get_provider_info
from airflow_mpu_provider.hooks.multipart import S3MultipartHook
from airflow_mpu_provider.multipart import RetryPlan, UploadOptions
from airflow_mpu_provider.multipart.errors import UploadCancelledError
from airflow_mpu_provider.multipart.units import MiB
from airflow_mpu_provider.operators.arguments import check_rendered_arguments, upload_arguments
from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator
from airflow_mpu_provider.operators.retry_ledger import retry_plan, will_retry
from tests.conftest import incomplete_uploads, make_file


def op(**kwargs) -> MultipartUploadOperator:
    kwargs.setdefault("file", "/data/dump.sql")
    kwargs.setdefault("key", "s3://bucket/dumps/x.sql")
    return MultipartUploadOperator(task_id="upload", **kwargs)


def options_of(operator: MultipartUploadOperator, **overrides) -> UploadOptions:
    """The options the hook builds for this operator's upload (the one constructor, as the hook calls it)."""
    return UploadOptions.from_arguments(replace=operator.replace, **{**upload_arguments(operator), **overrides})


def test_provider_info_names_the_operator_module():
    info = get_provider_info()
    assert info["package-name"] == "airflow-mpu-provider"
    modules = info["operators"][0]["python-modules"]
    assert "airflow_mpu_provider.operators.multipart_upload" in modules


def test_arguments_are_keyword_only_and_templated_fields_are_a_tuple():
    with pytest.raises(TypeError):
        MultipartUploadOperator("upload", "/f", "k")  # type: ignore[misc]
    assert isinstance(MultipartUploadOperator.template_fields, tuple)
    assert {"file", "key", "bucket"} <= set(MultipartUploadOperator.template_fields)


def test_target_from_url_or_bucket_argument():
    assert op(key="s3://b/some/key").resolve_target() == ("b", "some/key")
    assert op(key="some/key", bucket="b").resolve_target() == ("b", "some/key")


def test_object_arguments():
    args = op(
        sse_kms_key_id="alias/k",
        storage_class="GLACIER_IR",
        content_type="text/plain",
        metadata={"a": 1},
        tags={"team": "data eng", "x": "y"},
        acl_policy="bucket-owner-full-control",
        extra_args={"CacheControl": "no-cache", "StorageClass": "STANDARD"},
    )
    args = options_of(args).extra_args
    assert args == {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "alias/k",
        "StorageClass": "STANDARD",  # extra_args wins
        "ContentType": "text/plain",
        "Metadata": {"a": "1"},
        "Tagging": "team=data+eng&x=y",
        "ACL": "bucket-owner-full-control",
        "CacheControl": "no-cache",
    }


def test_misuse_is_refused_when_the_dag_is_parsed():
    with pytest.raises(ValueError, match="not CreateMultipartUpload arguments"):
        op(extra_args={"Bucket": "other"})
    with pytest.raises(ValueError, match="not both"):
        op(encrypt=True, sse_kms_key_id="k")
    with pytest.raises(ValueError, match="concurrency"):
        op(concurrency=0)


@pytest.mark.parametrize(
    ("ti", "retries", "expected"),
    [
        (SimpleNamespace(_ti_context_from_server=SimpleNamespace(should_retry=True)), 0, True),
        (SimpleNamespace(_ti_context_from_server=SimpleNamespace(should_retry=False)), 3, False),
        (SimpleNamespace(try_number=1, max_tries=2), 0, True),
        (SimpleNamespace(try_number=3, max_tries=2), 0, False),
        (None, 2, True),
        (None, 0, False),
    ],
)
def test_will_retry_asks_airflow(ti, retries, expected):
    assert will_retry(op(retries=retries), {"ti": ti}) is expected


def test_client_takes_the_connection_config_and_sizes_the_pool(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        '{"conn_type": "aws", "extra": {"region_name": "eu-west-1", "config_kwargs": {"connect_timeout": 7}}}',
    )
    operator = op(concurrency=16)
    client = operator.hook.upload_client_for(options_of(operator), 16 * MiB)
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.config.connect_timeout == 7
    assert client.meta.config.max_pool_connections >= 16
    assert client.meta.config.retries["mode"] == "standard"
    md5_only = operator.hook.upload_client_for(options_of(operator, checksum_algorithm=None), 16 * MiB)
    assert md5_only.meta.config.request_checksum_calculation == "when_required"


def test_abort_client_has_its_own_pool_the_same_connection_and_gives_up_quickly(monkeypatch):
    from airflow_mpu_provider.hooks.multipart import ABORT_TIMEOUT

    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        '{"conn_type": "aws", "extra": {"region_name": "eu-west-1", "endpoint_url": "http://127.0.0.1:9", '
        '"config_kwargs": {"read_timeout": 300, "s3": {"addressing_style": "path"}}}}',
    )
    operator = op()
    client = operator.hook.upload_client_for(options_of(operator), 16 * MiB)
    abort = operator.hook.get_abort_client()
    assert abort._endpoint.http_session is not client._endpoint.http_session  # its own connection pool
    assert (abort.meta.endpoint_url, abort.meta.region_name) == ("http://127.0.0.1:9", "eu-west-1")
    assert abort.meta.config.s3 == {"addressing_style": "path"}  # the connection's settings...
    assert abort.meta.config.read_timeout == abort.meta.config.connect_timeout == ABORT_TIMEOUT  # ...but quick
    assert abort.meta.config.retries["total_max_attempts"] == 2


def test_on_kill_during_execute_aborts_and_fails_the_task(mock_s3, tmp_path, monkeypatch, put_part_hooks):
    path = make_file(tmp_path / "f", 30 * MiB)
    operator = op(file=str(path), key="s3://test-bucket/killed.bin", part_size=5 * MiB, concurrency=1, retries=3)
    monkeypatch.setattr(operator.hook, "upload_client_for", lambda *a: mock_s3)
    first_part, killed = threading.Event(), threading.Event()

    def hold_until_killed(number: int) -> None:  # no part is reported done before on_kill ran
        first_part.set()
        killed.wait(30)

    def kill() -> None:
        if first_part.wait(30):
            operator.on_kill()
        killed.set()

    put_part_hooks.after = hold_until_killed
    killer = threading.Thread(target=kill)
    killer.start()
    with pytest.raises(UploadCancelledError):
        operator.execute({})  # retries=3: a plain failure would keep the upload, a kill never does
    killer.join(30)
    assert incomplete_uploads(mock_s3, "test-bucket") == []


def test_openlineage_facets():
    pytest.importorskip("airflow.providers.openlineage")
    lineage = op(file="/data/x.sql", key="s3://b/k/x.sql").get_openlineage_facets_on_start()
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("s3://b", "k/x.sql")]
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("file", "/data/x.sql")]
    streamed = op(file=None, command="/usr/bin/pg_dump postgresql://u:secret@db/app | zstd", key="s3://b/k.zst")
    lineage = streamed.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("command", "pg_dump")]
    assert "secret" not in repr(lineage)
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("s3://b", "k.zst")]


def test_exactly_one_of_file_or_command():
    with pytest.raises(ValueError, match="exactly one of file"):
        op(file=None)
    with pytest.raises(ValueError, match="exactly one of file"):
        op(command="true")


@pytest.mark.parametrize(("keep", "retries", "left"), [(True, 2, 1), (False, 2, 0), (True, 0, 0)])
def test_keep_or_abort_on_failure_follows_the_policy_and_airflows_retry_decision(
    mock_s3, tmp_path, monkeypatch, put_part_hooks, keep, retries, left
):
    path = make_file(tmp_path / "f", 12 * MiB)
    operator = op(
        file=str(path),
        key="s3://test-bucket/policy.bin",
        part_size=5 * MiB,
        concurrency=1,
        retries=retries,
        keep_upload_for_retry=keep,
        adopt_quiet_after=0,  # without task_state_store the retry adopts at once, so keeping makes sense
    )
    monkeypatch.setattr(operator.hook, "upload_client_for", lambda *a: mock_s3)
    put_part_hooks.fail_part(2, ConnectionError("connection reset by peer"))
    ti = SimpleNamespace(try_number=1, max_tries=retries, xcom_push=lambda **kw: None)
    with pytest.raises(ConnectionError):
        operator.execute({"ti": ti})
    assert len(incomplete_uploads(mock_s3, "test-bucket")) == left
    for upload in incomplete_uploads(mock_s3, "test-bucket"):  # leave the shared moto clean
        mock_s3.abort_multipart_upload(Bucket="test-bucket", Key=upload["Key"], UploadId=upload["UploadId"])


@pytest.mark.parametrize(
    ("settings", "left"),
    [
        ({}, 1),
        ({"storage_class": "STANDARD_IA"}, 1),
        ({"content_type": "application/x-backup"}, 0),
        ({"tags": {"a": "1"}}, 0),
    ],
)
def test_without_task_state_store_a_task_whose_settings_s3_does_not_show_aborts_rather_than_keeps(
    mock_s3, tmp_path, monkeypatch, put_part_hooks, settings, left
):
    """No record (Airflow < 3.3): the retry could find the upload only by listing, and never adopts a found
    upload when the task sets something S3 does not show for it; keeping it would leave it to the janitor."""
    path = make_file(tmp_path / "f", 12 * MiB)
    operator = op(
        file=str(path),
        key="s3://test-bucket/hidden-settings.bin",
        part_size=5 * MiB,
        concurrency=1,
        retries=2,
        adopt_quiet_after=0,
        **settings,
    )
    monkeypatch.setattr(operator.hook, "upload_client_for", lambda *a: mock_s3)
    put_part_hooks.fail_part(2, ConnectionError("connection reset by peer"))
    ti = SimpleNamespace(try_number=1, max_tries=2, xcom_push=lambda **kw: None)
    with pytest.raises(ConnectionError):
        operator.execute({"ti": ti})
    assert len(incomplete_uploads(mock_s3, "test-bucket")) == left
    for upload in incomplete_uploads(mock_s3, "test-bucket"):  # leave the shared moto clean
        mock_s3.abort_multipart_upload(Bucket="test-bucket", Key=upload["Key"], UploadId=upload["UploadId"])


# -- argument types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("part_size", 8e6, r"part_size must be a whole number of bytes \(an int\), got 8000000.0.*8_000_000"),
        ("part_size", True, r"part_size must be a whole number"),
        ("part_size", 1 * MiB, r"part_size=1,048,576 bytes is below S3's minimum"),
        ("concurrency", True, r"concurrency must be a whole number .*got True"),
        ("concurrency", 2.0, r"concurrency must be a whole number"),
        ("concurrency", 0, r"concurrency must be at least 1"),
        ("max_buffer_bytes", "1GiB", r"max_buffer_bytes must be a whole number of bytes .*'1GiB'"),
        ("max_buffer_bytes", 1e9, r"max_buffer_bytes must be a whole number"),
        ("max_bandwidth", True, r"max_bandwidth must be a whole number of bytes per second .*got True"),
        ("max_bandwidth", 3.2e7, r"max_bandwidth must be a whole number.*pass max_bandwidth=32_000_000"),
        ("max_bandwidth", 0, r"max_bandwidth must be at least 1 byte per second, got 0; pass None for no cap"),
        ("max_bandwidth", -1024, r"max_bandwidth must be at least 1 byte per second"),
        ("max_bandwidth", "32MiB", r"max_bandwidth must be a whole number .*'32MiB'.*strings are not parsed"),
        ("progress_interval", -1, r"progress_interval must be 0 or more seconds"),
        ("progress_interval", "30", r"progress_interval must be a number of seconds or a datetime.timedelta"),
        ("command_timeout", 0, r"command_timeout must be greater than 0 seconds"),
        ("command_timeout", -5.0, r"command_timeout must be greater than 0 seconds"),
        ("command_timeout", True, r"command_timeout must be a number of seconds"),
        ("command_timeout", "an hour", r"command_timeout must be a number of seconds .*'an hour'"),
        ("storage_class", 3, r"storage_class must be a string or None"),
        ("aws_conn_id", 1, r"aws_conn_id must be a string or None"),
    ],
)
def test_wrong_arguments_are_refused_when_the_dag_is_parsed(argument, value, message):
    """Before any S3 request can be made: the operator does not even exist yet."""
    from airflow_mpu_provider.multipart.errors import InvalidUploadRequest

    with pytest.raises(InvalidUploadRequest, match=message):
        op(**{argument: value})


def test_durations_as_seconds_or_timedelta():
    from datetime import timedelta

    assert op(progress_interval=timedelta(seconds=90)).progress_interval == 90.0
    assert op(progress_interval=0).progress_interval == 0.0
    assert op(file=None, command="true", command_timeout=timedelta(hours=1)).command_timeout == 3600.0
    assert op(file=None, command="true", command_timeout=90).command_timeout == 90.0


def test_more_arguments_are_templated():
    fields = MultipartUploadOperator.template_fields
    assert isinstance(fields, tuple)
    assert {"aws_conn_id", "sse_kms_key_id", "storage_class", "acl_policy", "command_timeout"} <= set(fields)


def test_templated_timeout_is_checked_once_rendered_before_any_s3_call(monkeypatch):
    from airflow_mpu_provider.multipart.errors import InvalidUploadRequest

    task = op(file=None, command="true", command_timeout="{{ params.timeout }}")  # not rendered yet: accepted
    assert task.command_timeout == "{{ params.timeout }}"

    def no_s3(*args, **kwargs):
        raise AssertionError("an S3 client was asked for before the arguments were checked")

    monkeypatch.setattr(S3MultipartHook, "get_upload_client", no_s3)
    task.command_timeout = "soon"  # what a bad template renders to
    with pytest.raises(InvalidUploadRequest, match="command_timeout must be a number of seconds .*'soon'"):
        task.execute({})
    task.command_timeout = "3600"  # what a good one renders to
    check_rendered_arguments(task)
    assert task.command_timeout == 3600.0


def test_the_operator_can_be_deep_copied_as_airflow_does():
    import copy

    operator = op(adopt_quiet_after=30)
    clone = copy.deepcopy(operator)
    assert clone.adopt_quiet_after == timedelta(seconds=30)


def test_adopt_quiet_after_takes_seconds_or_a_timedelta_and_never_a_negative():
    assert op().adopt_quiet_after == timedelta(minutes=15)
    assert op(adopt_quiet_after=timedelta(hours=1)).adopt_quiet_after == timedelta(hours=1)
    with pytest.raises(ValueError, match="adopt_quiet_after"):
        op(adopt_quiet_after=-1)
    assert op(adopt_quiet_after=None).adopt_quiet_after is None  # never adopt a found upload
    with pytest.raises(ValueError, match="adopt_quiet_after"):
        op(adopt_quiet_after="15m")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"retries": 1, "retry_delay": timedelta(minutes=20)}, RetryPlan(delay=timedelta(minutes=20))),
        ({"retries": 1, "retry_delay": timedelta(minutes=20), "resume": False}, None),
        ({"retries": 1, "retry_delay": timedelta(minutes=20), "keep_upload_for_retry": False}, None),
        ({"retries": 0, "retry_delay": timedelta(minutes=20)}, None),
    ],
)
def test_the_retry_plan_says_when_airflow_will_run_the_task_again_and_after_what_delay(kwargs, expected):
    """What the engine's keep-for-retry rule decides from (tests/multipart/test_file_upload.py has the rule)."""
    operator = op(**kwargs)
    assert retry_plan(operator, {"ti": SimpleNamespace(try_number=1, max_tries=kwargs["retries"])}) == expected


def test_on_kill_after_execute_ended_touches_nothing(mock_s3, tmp_path, monkeypatch):
    """Airflow calls on_kill after an execution_timeout, once execute() has ended: the upload it kept
    for the retry must stay."""
    from airflow_mpu_provider.multipart.upload import MultipartUpload

    operator = op(file=str(make_file(tmp_path / "f", 10)), key="s3://test-bucket/x")
    monkeypatch.setattr(MultipartUpload, "abort", lambda self, **kw: pytest.fail("aborted after execute ended"))
    operator.on_kill()
    assert operator.hook.cancelled


def test_on_kill_before_execute_looks_nothing_up_and_execute_then_refuses(mock_s3, tmp_path, monkeypatch):
    """A kill that lands before execute() (a kill during the window wait, or before it began) builds the hook in
    Airflow's signal handler: that must do no I/O (no connection lookup, no client), and the execute that
    follows must refuse to upload anything."""
    from airflow_mpu_provider.multipart.errors import UploadCancelledError

    in_handler = True
    get_connection, get_conn = S3MultipartHook.get_connection, S3MultipartHook.get_conn

    def lookup(cls, conn_id):
        assert not in_handler, "the signal handler looked up the connection"
        return get_connection(conn_id)

    def client(self):
        assert not in_handler, "the signal handler built a client"
        return get_conn(self)

    monkeypatch.setattr(S3MultipartHook, "get_connection", classmethod(lookup))
    monkeypatch.setattr(S3MultipartHook, "get_conn", client)
    operator = op(file=str(make_file(tmp_path / "f", 10)), key="s3://test-bucket/x")
    operator.on_kill()
    in_handler = False
    assert operator.hook.cancelled
    with pytest.raises(UploadCancelledError):
        operator.execute({})
    assert mock_s3.list_multipart_uploads(Bucket="test-bucket").get("Uploads", []) == []
    assert "Contents" not in mock_s3.list_objects_v2(Bucket="test-bucket")


def test_max_bandwidth_reaches_the_engine_options_and_defaults_to_no_cap():
    assert options_of(op()).max_bandwidth is None
    assert options_of(op(max_bandwidth=32 * MiB)).max_bandwidth == 32 * MiB
    assert options_of(op(file=None, command="true", max_bandwidth=1)).max_bandwidth == 1
