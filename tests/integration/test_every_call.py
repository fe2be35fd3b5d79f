"""Every S3 request of every path carries the upload's per-request arguments.

A requester-pays bucket answers 403 to any request without ``x-amz-request-payer``, and a bucket-owner
check protects only the requests that carry ``x-amz-expected-bucket-owner``; an SSE-C object needs its
key on every request about its bytes. The proxy sees every request on the wire: a full run (existence
check, create, parts, a failure kept for the retry, resume by listing, completion, verification), an
aborted run, a streamed command, a refused existing key and the janitor are recorded, and each request
is checked for the headers its operation accepts.
"""

from __future__ import annotations

import pytest

from airflow_mpu_provider.multipart.errors import S3UploadError
from airflow_mpu_provider.operators.cleanup import S3AbortStaleUploadsOperator
from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator
from airflow_mpu_provider.version_compat import AIRFLOW_V_3_3_PLUS
from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file
from tests.integration.conftest import BUCKET, FakeStateStore, FakeTaskInstance
from tests.support.s3_proxy import Fault

pytestmark = pytest.mark.integration

OWNER = "123456789012"  # moto's account: its bucket-owner check (if any) passes
PAYER_AND_OWNER = {"RequestPayer": "requester", "ExpectedBucketOwner": OWNER}
#: botocore base64-encodes the key and adds its MD5 itself.
SSE_C = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": "0123456789abcdef0123456789abcdef"}
#: Operations that take the SSE-C headers (AbortMultipartUpload and ListMultipartUploads do not).
SSE_C_OPERATIONS = {"CreateMultipartUpload", "UploadPart", "ListParts", "CompleteMultipartUpload", "HeadObject"}


def header(record, name: str) -> str | None:
    return next((v for k, v in record.headers.items() if k.lower() == name), None)


def lacking(records, *, sse_c: bool) -> list[tuple[str, str]]:
    """(operation, missing header) for every request that lacks a header it should carry."""
    missing = []
    for record in records:
        expected = {"x-amz-request-payer": "requester", "x-amz-expected-bucket-owner": OWNER}
        if sse_c and record.kind in SSE_C_OPERATIONS:
            expected["x-amz-server-side-encryption-customer-algorithm"] = "AES256"
        missing += [(record.kind, name) for name, value in expected.items() if header(record, name) != value]
    return missing


def report_id(proxy) -> str | None:
    """The UploadId the retry continued: the one the first CreateMultipartUpload's parts went to."""
    parts = [r for r in proxy.requests() if r.kind == "UploadPart"]
    return parts[0].upload_id if parts else None


def upload(conn_id: str, key: str, extra_args: dict, **kwargs) -> MultipartUploadOperator:
    kwargs.setdefault("part_size", 5 * MiB)
    kwargs.setdefault("concurrency", 1)
    kwargs.setdefault("adopt_quiet_after", 0)  # no task_state_store here: the retry adopts by listing, at once
    return MultipartUploadOperator(
        task_id="upload",
        key=f"s3://{BUCKET}/{key}",
        aws_conn_id=conn_id,
        progress_interval=0,
        extra_args=extra_args,
        **kwargs,
    )


@pytest.mark.parametrize("sse_c", [False, True], ids=["payer-owner", "payer-owner-sse-c"])
def test_every_request_of_every_path_carries_the_per_request_arguments(connection, proxy, s3, tmp_path, sse_c):
    extra_args = {**PAYER_AND_OWNER, **(SSE_C if sse_c else {})}
    prefix = f"every-call/{'ssec' if sse_c else 'plain'}/"
    conn_id = connection(config_kwargs={"retries": {"mode": "standard", "max_attempts": 0}})
    path = make_file(tmp_path / "f", 16 * MiB)
    proxy.reset_counts()

    # 1. A try that fails after two parts with a retry to come: existence check, create, parts; kept.
    proxy.fail_nth("UploadPart", 3)  # decided as requests arrive: parts 1 and 2 are stored
    store = FakeStateStore()
    with pytest.raises(S3UploadError):
        upload(conn_id, prefix + "resumed.bin", extra_args, file=str(path)).execute(
            {"ti": FakeTaskInstance(max_tries=1), "task_state_store": store}
        )
    proxy.on_request = None
    proxy.clear_faults()
    kept = incomplete_uploads(s3, BUCKET, prefix)
    # Without a record (Airflow < 3.3) the retry could only find it by listing, and never adopts a found
    # upload whose SSE-C S3 does not show: the failed try aborts it rather than keep it for nobody.
    unrecorded_sse_c = sse_c and not AIRFLOW_V_3_3_PLUS
    assert len(kept) == (0 if unrecorded_sse_c else 1)

    # 2. The retry: found in task_state_store (Airflow >= 3.3) or by listing, parts listed and verified,
    #    the rest sent, completed, verified with HeadObject.
    result = upload(conn_id, prefix + "resumed.bin", extra_args, file=str(path)).execute(
        {"ti": FakeTaskInstance(try_number=2, max_tries=1), "task_state_store": store}
    )
    # Under SSE-C the stored parts' ETags are no MD5s and moto lists no checksums: nothing can be
    # verified, so everything is sent again rather than trusted.
    # (Part 4 may have gone out while the first try was stopping after part 3's failure: then 3 resumed.)
    resumed, sent = result["parts_resumed"], result["parts_sent"]
    if sse_c:
        assert (resumed, sent) == (0, 4)
    else:
        assert resumed in (2, 3) and resumed + sent == 4, (resumed, sent)
    if unrecorded_sse_c:
        assert proxy.count("CreateMultipartUpload") == 2  # afresh
    else:
        assert result["upload_id"] == report_id(proxy)

    # 3. replace=False finds another object: refused after a HeadObject.
    other = make_file(tmp_path / "other", 16 * MiB, seed=3)
    with pytest.raises(S3UploadError, match="already exists"):
        upload(conn_id, prefix + "resumed.bin", extra_args, file=str(other)).execute({})

    # 4. A failure with no retry to come: aborted, and the abort confirmed by ListParts.
    proxy.add_fault(Fault(kind="UploadPart", action="error", status=500, times=1))
    with pytest.raises(S3UploadError):
        upload(conn_id, prefix + "aborted.bin", extra_args, file=str(path)).execute({})
    proxy.clear_faults()

    # 5. A streamed command.
    upload(conn_id, prefix + "stream.bin", extra_args, command="head -c 6000000 /dev/zero").execute({})

    # 6. The janitor, on an upload left behind (moto dates every upload in 2010: it is stale).
    before_janitor = len(proxy.requests())
    left = s3.create_multipart_upload(Bucket=BUCKET, Key=prefix + "left.bin", **extra_args)["UploadId"]
    report = S3AbortStaleUploadsOperator(
        task_id="janitor",
        bucket=BUCKET,
        prefix=prefix,
        aws_conn_id=conn_id,
        request_payer="requester",
        expected_bucket_owner=OWNER,
    ).execute({})
    assert [u["upload_id"] for u in report["uploads"]] == [left]

    records = proxy.requests()
    seen = {r.kind for r in records}
    assert seen >= {
        "HeadObject",
        "CreateMultipartUpload",
        "UploadPart",
        "ListMultipartUploads",
        "ListParts",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
    }
    assert lacking(records[:before_janitor], sse_c=sse_c) == []
    assert lacking(records[before_janitor:], sse_c=False) == []  # the janitor has no customer key
    assert all(r.query.get("encoding-type") == "url" for r in records if r.kind == "ListMultipartUploads")
    if sse_c:  # never sent where the operation does not take it (botocore would refuse the call)
        assert not any(
            header(r, "x-amz-server-side-encryption-customer-algorithm")
            for r in records
            if r.kind not in SSE_C_OPERATIONS
        )
    assert incomplete_uploads(s3, BUCKET, prefix) == []
    assert (
        s3.head_object(Bucket=BUCKET, Key=prefix + "resumed.bin", **extra_args)["ContentLength"] == path.stat().st_size
    )
    assert sha256_file(path)  # the file itself is untouched
