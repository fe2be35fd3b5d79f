"""S3AbortStaleUploadsOperator against in-process moto.

moto gives every upload the same fixed ``Initiated`` timestamp, so the ``aged_s3`` fixture rewrites it
per UploadId in ListMultipartUploads' answers and pins the sweep's clock (``stale._utcnow``).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from airflow_mpu_provider.hooks.multipart import S3MultipartHook
from airflow_mpu_provider.multipart import stale
from airflow_mpu_provider.multipart.errors import InvalidUploadRequest, S3UploadError, UploadCancelledError
from airflow_mpu_provider.operators.cleanup import S3AbortStaleUploadsOperator, StaleUploadCleanupError
from tests.conftest import incomplete_uploads

BUCKET = "test-bucket"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


class AgedS3:
    """The moto client, with the ages of its uploads under the test's control."""

    def __init__(self, client, monkeypatch) -> None:
        self.client = client
        self.initiated: dict[str, datetime] = {}
        real = client.list_multipart_uploads

        def aged(**kwargs):
            response = real(**kwargs)
            for upload in response.get("Uploads", []):
                upload["Initiated"] = self.initiated.get(upload["UploadId"], upload["Initiated"])
            return response

        monkeypatch.setattr(client, "list_multipart_uploads", aged)

    def start(self, key: str, age: timedelta, parts: tuple[bytes, ...] = (b"x" * 10,)) -> str:
        upload_id = self.client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
        for number, body in enumerate(parts, start=1):
            self.client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
        self.initiated[upload_id] = NOW - age
        return upload_id

    def survivors(self) -> set[tuple[str, str]]:
        return {(u["Key"], u["UploadId"]) for u in incomplete_uploads(self.client, BUCKET)}


@pytest.fixture
def aged_s3(mock_s3, monkeypatch) -> AgedS3:
    monkeypatch.setattr(stale, "_utcnow", lambda: NOW)
    monkeypatch.setattr(S3MultipartHook, "get_conn", lambda self: mock_s3)
    return AgedS3(mock_s3, monkeypatch)


def operator(**kwargs) -> S3AbortStaleUploadsOperator:
    kwargs.setdefault("bucket", BUCKET)
    return S3AbortStaleUploadsOperator(task_id="abort_stale", **kwargs)


# -- what gets aborted ------------------------------------------------------------------------


def test_aborts_only_uploads_older_than_the_cutoff(aged_s3):
    old = aged_s3.start("dumps/old.sql", 10 * DAY, (b"a" * 100, b"b" * 50))
    older = aged_s3.start("dumps/older.sql", 30 * DAY)
    young = aged_s3.start("dumps/young.sql", 6 * DAY)
    fresh = aged_s3.start("dumps/fresh.sql", timedelta(minutes=5))

    result = operator(prefix="dumps/").execute(context={})

    assert aged_s3.survivors() == {("dumps/young.sql", young), ("dumps/fresh.sql", fresh)}
    assert result["aborted"] == 2
    assert result["bytes"] == 160
    assert result["dry_run"] is False
    assert (result["bucket"], result["prefix"]) == (BUCKET, "dumps/")
    assert result["oldest_age_seconds"] == (30 * DAY).total_seconds()
    by_id = {u["upload_id"]: u for u in result["uploads"]}
    assert set(by_id) == {old, older}
    assert by_id[old] == {
        "key": "dumps/old.sql",
        "upload_id": old,
        "initiated": (NOW - 10 * DAY).isoformat(),
        "age_seconds": (10 * DAY).total_seconds(),
        "parts": 2,
        "bytes": 150,
    }
    assert json.loads(json.dumps(result)) == result  # fit for XCom


def test_default_older_than_is_seven_days(aged_s3):
    aged_s3.start("k/eight-days", 8 * DAY)
    kept = aged_s3.start("k/six-days", 6 * DAY)
    op = operator()
    assert op.older_than == timedelta(days=7)
    assert op.execute(context={})["aborted"] == 1
    assert aged_s3.survivors() == {("k/six-days", kept)}


def test_only_uploads_under_the_prefix(aged_s3):
    aged_s3.start("dumps/a.sql", 10 * DAY)
    sibling = aged_s3.start("dumps-other/a.sql", 10 * DAY)
    root = aged_s3.start("a.sql", 10 * DAY)

    result = operator(prefix="dumps/", older_than=DAY).execute(context={})

    assert result["aborted"] == 1
    assert [u["key"] for u in result["uploads"]] == ["dumps/a.sql"]
    assert aged_s3.survivors() == {("dumps-other/a.sql", sibling), ("a.sql", root)}


def test_empty_prefix_means_the_whole_bucket(aged_s3):
    for key in ("a", "dumps/b", "x/y/z"):
        aged_s3.start(key, 3 * DAY)
    result = operator(prefix="", older_than=DAY).execute(context={})
    assert result["aborted"] == 3
    assert aged_s3.survivors() == set()


def test_s3_url_prefix_without_bucket(aged_s3):
    aged_s3.start("dumps/a.sql", 3 * DAY)
    kept = aged_s3.start("logs/a.log", 3 * DAY)
    result = operator(bucket=None, prefix=f"s3://{BUCKET}/dumps/", older_than=DAY).execute(context={})
    assert (result["bucket"], result["prefix"], result["aborted"]) == (BUCKET, "dumps/", 1)
    assert aged_s3.survivors() == {("logs/a.log", kept)}


def test_nothing_stale_returns_an_empty_report(aged_s3):
    kept = aged_s3.start("dumps/a.sql", timedelta(hours=1))
    result = operator(prefix="dumps/", older_than=DAY).execute(context={})
    assert result == {
        "bucket": BUCKET,
        "prefix": "dumps/",
        "dry_run": False,
        "aborted": 0,
        "would_abort": 0,
        "bytes": 0,
        "size_unknown": 0,
        "oldest_age_seconds": None,
        "uploads": [],
    }
    assert aged_s3.survivors() == {("dumps/a.sql", kept)}


def test_upload_without_parts_counts_zero_bytes(aged_s3):
    aged_s3.start("dumps/empty", 3 * DAY, parts=())
    result = operator(older_than=DAY).execute(context={})
    assert (result["aborted"], result["bytes"], result["uploads"][0]["parts"]) == (1, 0, 0)
    assert aged_s3.survivors() == set()


# -- dry run ----------------------------------------------------------------------------------


def test_dry_run_aborts_nothing_but_reports_the_same(aged_s3):
    aged_s3.start("dumps/a", 5 * DAY, (b"1" * 7, b"2" * 8))
    aged_s3.start("dumps/b", 9 * DAY, (b"3" * 9,))
    aged_s3.start("dumps/c", timedelta(hours=2))
    before = aged_s3.survivors()

    dry = operator(prefix="dumps/", older_than=DAY, dry_run=True).execute(context={})
    assert aged_s3.survivors() == before
    real = operator(prefix="dumps/", older_than=DAY).execute(context={})

    assert dry["dry_run"] is True and real["dry_run"] is False
    for field in ("bytes", "oldest_age_seconds", "uploads"):
        assert dry[field] == real[field], field
    # A dry run aborts nothing and says so: what it would abort is "would_abort" (issue #20).
    assert (dry["aborted"], dry["would_abort"], dry["bytes"]) == (0, 2, 24)
    assert (real["aborted"], real["would_abort"]) == (2, 0)
    assert [k for k, _ in aged_s3.survivors()] == ["dumps/c"]


def test_one_part_and_one_upload_are_singular_in_the_log(aged_s3, monkeypatch, caplog):
    """Issue #20: "1 parts" and "1 stale multipart uploads"."""
    aged_s3.start("dumps/one", 5 * DAY, (b"1" * 9,))
    task_log = logging.getLogger("tests.cleanup")  # caplog does not see the task SDK's structlog logger
    monkeypatch.setattr(S3MultipartHook, "log", property(lambda self: task_log))
    caplog.set_level("INFO", logger="tests.cleanup")
    operator(prefix="dumps/", older_than=DAY, dry_run=True).execute(context={})
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "tests.cleanup")
    assert "1 part, 9 B" in text and "Would abort 1 stale multipart upload under" in text
    assert "1 parts" not in text and "1 stale multipart uploads" not in text


# -- pagination -------------------------------------------------------------------------------


def test_bytes_are_summed_across_pages_of_parts(aged_s3, monkeypatch):
    client = aged_s3.client
    aged_s3.start("dumps/many-parts", 3 * DAY, (b"a" * 11, b"b" * 22, b"c" * 33))
    real = client.list_parts
    markers = []

    def one_per_page(**kwargs):
        markers.append(kwargs["PartNumberMarker"])
        return real(MaxParts=1, **kwargs)

    monkeypatch.setattr(client, "list_parts", one_per_page)
    result = operator(older_than=DAY, dry_run=True).execute(context={})
    assert result["uploads"][0]["parts"] == 3
    assert result["bytes"] == 66
    assert markers == [0, 1, 2]


def test_uploads_are_listed_page_by_page(aged_s3, monkeypatch):
    """moto ignores MaxUploads and the markers, so S3's paging is played here, one upload per page."""
    client = aged_s3.client
    ids = [aged_s3.start(f"dumps/{i}", (i + 2) * DAY) for i in range(4)]
    ids.append(aged_s3.start("dumps/3", 20 * DAY))  # a second upload of the same key
    kept = aged_s3.start("dumps/new", timedelta(0))
    everything = client.list_multipart_uploads
    calls = []

    def one_per_page(**kwargs):
        calls.append((kwargs.get("KeyMarker"), kwargs.get("UploadIdMarker")))
        args = {k: v for k, v in kwargs.items() if k not in ("KeyMarker", "UploadIdMarker")}
        uploads = everything(**args)["Uploads"]
        start = 0
        if "KeyMarker" in kwargs:
            position = [(u["Key"], u["UploadId"]) for u in uploads]
            start = position.index((kwargs["KeyMarker"], kwargs["UploadIdMarker"])) + 1
        page = uploads[start : start + 1]
        truncated = start + 1 < len(uploads)
        response = {"Uploads": page, "IsTruncated": truncated}
        if truncated:
            response |= {"NextKeyMarker": page[-1]["Key"], "NextUploadIdMarker": page[-1]["UploadId"]}
        return response

    monkeypatch.setattr(client, "list_multipart_uploads", one_per_page)
    result = operator(prefix="dumps/", older_than=DAY).execute(context={})

    assert result["aborted"] == 5
    assert {u["upload_id"] for u in result["uploads"]} == set(ids)
    assert len(calls) == 6  # one page per upload, kept one included
    assert calls[0] == (None, None)
    assert all(key and upload_id for key, upload_id in calls[1:])
    monkeypatch.setattr(client, "list_multipart_uploads", everything)
    assert aged_s3.survivors() == {("dumps/new", kept)}


def test_pagination_without_progress_fails_instead_of_looping(aged_s3, monkeypatch):
    client = aged_s3.client
    aged_s3.start("dumps/a", 3 * DAY)
    real = client.list_multipart_uploads

    def stuck(**kwargs):
        response = real(**{k: v for k, v in kwargs.items() if k not in ("KeyMarker", "UploadIdMarker")})
        return {**response, "IsTruncated": True, "NextKeyMarker": "dumps/a", "NextUploadIdMarker": "same"}

    monkeypatch.setattr(client, "list_multipart_uploads", stuck)
    with pytest.raises(S3UploadError, match="pagination"):
        operator(older_than=DAY).execute(context={})


# -- failures ---------------------------------------------------------------------------------


def access_denied(operation: str) -> ClientError:
    return ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, operation)


def test_a_failed_abort_does_not_stop_the_others(aged_s3, monkeypatch):
    client = aged_s3.client
    for name in ("a", "b", "c", "d"):
        aged_s3.start(f"dumps/{name}", 3 * DAY)
    locked = aged_s3.start("dumps/locked", 3 * DAY)
    real = client.abort_multipart_upload

    def abort(**kwargs):
        if kwargs["Key"] == "dumps/locked":
            raise access_denied("AbortMultipartUpload")
        return real(**kwargs)

    monkeypatch.setattr(client, "abort_multipart_upload", abort)
    with pytest.raises(StaleUploadCleanupError) as caught:
        operator(prefix="dumps/", older_than=DAY).execute(context={})

    message = str(caught.value)
    assert "1 of 5" in message and "could not be aborted" in message
    assert "AccessDenied" in message and "dumps/locked" in message and locked in message
    assert caught.value.failures[0][:2] == ("dumps/locked", locked)
    assert caught.value.report["aborted"] == 4
    assert aged_s3.survivors() == {("dumps/locked", locked)}


def test_failure_message_quotes_only_the_first_few(aged_s3, monkeypatch):
    client = aged_s3.client
    for i in range(6):
        aged_s3.start(f"dumps/{i}", 3 * DAY)

    def abort(**kwargs):
        raise access_denied("AbortMultipartUpload")

    monkeypatch.setattr(client, "abort_multipart_upload", abort)
    with pytest.raises(StaleUploadCleanupError, match=r"6 of 6 .*and 3 more") as caught:
        operator(older_than=DAY).execute(context={})
    assert len(caught.value.failures) == 6
    assert str(caught.value).count("AccessDenied") == stale.MAX_QUOTED_FAILURES
    assert len(aged_s3.survivors()) == 6


def test_upload_gone_before_its_turn_is_skipped_not_failed(aged_s3, monkeypatch):
    client = aged_s3.client
    aged_s3.start("dumps/a", 3 * DAY)
    gone = aged_s3.start("dumps/b", 3 * DAY)
    real = client.list_parts

    def list_parts(**kwargs):
        if kwargs["UploadId"] == gone:  # completed or aborted elsewhere after it was listed
            client.abort_multipart_upload(Bucket=BUCKET, Key="dumps/b", UploadId=gone)
        return real(**kwargs)

    monkeypatch.setattr(client, "list_parts", list_parts)
    result = operator(older_than=DAY).execute(context={})
    assert result["aborted"] == 1
    assert [u["key"] for u in result["uploads"]] == ["dumps/a"]
    assert aged_s3.survivors() == set()


@pytest.mark.parametrize("dry_run", [False, True])
def test_uploads_whose_parts_cannot_be_listed_are_aborted_with_size_unknown(aged_s3, monkeypatch, dry_run):
    """ListParts of an SSE-C upload created with a checksum needs the customer key: the janitor has none."""
    client = aged_s3.client
    aged_s3.start("dumps/a", 3 * DAY, (b"a" * 10,))
    ssec = aged_s3.start("dumps/ssec", 3 * DAY, (b"b" * 20,))
    real = client.list_parts

    def list_parts(**kwargs):
        if kwargs["UploadId"] == ssec:
            raise ClientError(
                {"Error": {"Code": "InvalidRequest", "Message": "The multipart upload was created with SSE-C"}},
                "ListParts",
            )
        return real(**kwargs)

    monkeypatch.setattr(client, "list_parts", list_parts)
    result = operator(older_than=DAY, dry_run=dry_run).execute(context={})
    assert result["would_abort" if dry_run else "aborted"] == 2
    assert result["size_unknown"] == 1
    assert result["bytes"] == 10  # the known ones
    unknown = [u for u in result["uploads"] if u["upload_id"] == ssec]
    assert unknown and (unknown[0]["parts"], unknown[0]["bytes"]) == (None, None)
    assert len(aged_s3.survivors()) == (2 if dry_run else 0)
    json.dumps(result)


def test_kill_stops_before_the_next_upload(aged_s3, monkeypatch):
    client = aged_s3.client
    aged_s3.start("dumps/a", 3 * DAY)
    aged_s3.start("dumps/b", 3 * DAY)
    op = operator(older_than=DAY)
    real = client.abort_multipart_upload

    def abort(**kwargs):
        op.on_kill()
        return real(**kwargs)

    monkeypatch.setattr(client, "abort_multipart_upload", abort)
    with pytest.raises(UploadCancelledError, match="killed after handling 1 of 2"):
        op.execute(context={})
    assert len(aged_s3.survivors()) == 1


# -- reporting --------------------------------------------------------------------------------


def test_log_lines_and_report_are_capped(aged_s3, monkeypatch, caplog):
    monkeypatch.setattr(stale, "MAX_LOGGED_UPLOADS", 2)
    monkeypatch.setattr(stale, "MAX_REPORTED_UPLOADS", 3)
    for i in range(5):
        aged_s3.start(f"dumps/{i}", 3 * DAY, (b"z" * 10,))
    # The task SDK's logger writes through structlog, which caplog does not see: log to a plain one.
    task_log = logging.getLogger("tests.cleanup")
    monkeypatch.setattr(S3MultipartHook, "log", property(lambda self: task_log))
    caplog.set_level("INFO", logger="tests.cleanup")

    result = operator(older_than=DAY).execute(context={})

    assert (result["aborted"], result["bytes"], len(result["uploads"])) == (5, 50, 3)
    lines = [r.getMessage() for r in caplog.records if r.name == "tests.cleanup"]
    assert sum(line.startswith("Aborted s3://") for line in lines) == 2
    assert any("Not logging the remaining" in line for line in lines)
    summary = [line for line in lines if "stale multipart uploads under s3://test-bucket/" in line]
    assert summary and "Aborted 5 " in summary[-1] and "50 bytes" in summary[-1]


# -- arguments --------------------------------------------------------------------------------


def test_older_than_as_timedelta_or_seconds():
    assert operator(older_than=timedelta(hours=2)).older_than == timedelta(hours=2)
    assert operator(older_than=7200).older_than == timedelta(hours=2)
    assert operator(older_than=0.5).older_than == timedelta(seconds=0.5)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (timedelta(seconds=-1), "older_than must be 0 or more seconds"),
        (-1, "older_than must be 0 or more seconds"),
        (True, "older_than must be a number of seconds or a datetime.timedelta, got True"),
        ("7d", "older_than must be a number of seconds or a datetime.timedelta, got '7d'"),
        (float("nan"), "older_than must be a finite number"),
    ],
)
def test_wrong_older_than_is_refused_when_the_dag_is_parsed(value, message):
    with pytest.raises(InvalidUploadRequest, match=message):
        operator(older_than=value)


def test_request_payer_and_bucket_owner_go_with_every_call(aged_s3, monkeypatch):
    """A requester-pays bucket answers 403 to any call without RequestPayer: listing, ListParts, abort."""
    from tests.support.recorded_calls import missing_args, record_calls

    aged_s3.start("dumps/a", 3 * DAY)
    calls = record_calls(aged_s3.client)
    expected = {"RequestPayer": "requester", "ExpectedBucketOwner": "123456789012"}
    result = operator(older_than=DAY, request_payer="requester", expected_bucket_owner="123456789012").execute({})
    assert result["aborted"] == 1
    assert {name for name, _ in calls} == {"ListMultipartUploads", "ListParts", "AbortMultipartUpload"}
    assert missing_args(calls, expected) == []
    assert all(params.get("EncodingType") == "url" for name, params in calls if name == "ListMultipartUploads")


@pytest.mark.parametrize(
    ("bucket", "prefix", "expected"),
    [
        ("b", "dumps/", ("b", "dumps/")),
        ("b", "", ("b", "")),
        ("b", None, ("b", "")),
        (None, "s3://b/dumps/", ("b", "dumps/")),
        (None, "s3://b", ("b", "")),
        (None, "s3://b/", ("b", "")),
    ],
)
def test_resolve_target(bucket, prefix, expected):
    assert operator(bucket=bucket, prefix=prefix).resolve_target() == expected


@pytest.mark.parametrize(
    ("bucket", "prefix"),
    [(None, ""), (None, "dumps/"), ("b", "s3://other/dumps/"), (None, "s3:///dumps/")],
)
def test_resolve_target_refuses_unclear_arguments(bucket, prefix):
    with pytest.raises(InvalidUploadRequest):
        operator(bucket=bucket, prefix=prefix).resolve_target()


def test_templated_fields():
    assert tuple(S3AbortStaleUploadsOperator.template_fields) == ("bucket", "prefix")


def test_through_s3hook_with_moto_timestamps(mock_s3):
    """No seams: the S3Hook client, the real clock; moto dates every upload in 2010, so all are stale."""
    upload_id = mock_s3.create_multipart_upload(Bucket=BUCKET, Key="dumps/a")["UploadId"]
    mock_s3.upload_part(Bucket=BUCKET, Key="dumps/a", UploadId=upload_id, PartNumber=1, Body=b"q" * 42)
    kept = mock_s3.create_multipart_upload(Bucket=BUCKET, Key="elsewhere/a")["UploadId"]

    result = S3AbortStaleUploadsOperator(
        task_id="abort_stale", prefix=f"s3://{BUCKET}/dumps/", older_than=timedelta(days=1)
    ).execute(context={})

    assert (result["aborted"], result["bytes"]) == (1, 42)
    assert result["oldest_age_seconds"] > timedelta(days=365).total_seconds()
    assert [(u["Key"], u["UploadId"]) for u in incomplete_uploads(mock_s3, BUCKET)] == [("elsewhere/a", kept)]
