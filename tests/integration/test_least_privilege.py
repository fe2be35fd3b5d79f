"""Least privilege: the README's minimal IAM policy is sufficient, and each optional permission degrades.

A moto server with IAM authorization switched on enforces the policies (moto maps every S3 request
to the IAM action AWS checks: HeadObject -> s3:GetObject, ListParts -> s3:ListMultipartUploadParts,
ListMultipartUploads -> s3:ListBucketMultipartUploads, ...). Stores that lack an API are simulated by
the fault-injecting proxy answering that API with the store's error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from airflow_mpu_provider.multipart.errors import S3UploadError
from airflow_mpu_provider.operators.multipart_upload import STATE_KEY, MultipartUploadOperator
from airflow_mpu_provider.version_compat import AIRFLOW_V_3_3_PLUS
from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.integration.conftest import BUCKET, FakeStateStore, FakeTaskInstance
from tests.support.local_airflow import aws_connection, moto_server_process
from tests.support.s3_proxy import Fault, S3Proxy

pytestmark = pytest.mark.integration

IAM_BUCKET = "least-privilege"
NO_RETRIES = {"retries": {"mode": "standard", "max_attempts": 0}}


def minimal_policy(bucket: str, *, list_bucket: bool = True, list_uploads: bool = True) -> dict[str, Any]:
    """The README's policy. The second statement holds the two optional permissions."""
    optional = [
        *(["s3:ListBucket"] if list_bucket else []),
        *(["s3:ListBucketMultipartUploads"] if list_uploads else []),
    ]
    statements: list[dict[str, Any]] = [
        {
            "Sid": "UploadAbortVerify",
            "Effect": "Allow",
            "Action": ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
            "Resource": f"arn:aws:s3:::{bucket}/*",
        }
    ]
    if optional:
        statements.append(
            {
                "Sid": "ExistenceCheckAndResume",
                "Effect": "Allow",
                "Action": optional,
                "Resource": f"arn:aws:s3:::{bucket}",
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


USERS = {
    "admin": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]},
    "minimal": minimal_policy(IAM_BUCKET),
    "no-list-uploads": minimal_policy(IAM_BUCKET, list_uploads=False),
    "no-list-bucket": minimal_policy(IAM_BUCKET, list_bucket=False),
}


@pytest.fixture(scope="module")
def iam_s3() -> Iterator[dict[str, Any]]:
    """A moto server enforcing IAM, one user per policy, and a proxy in front of it."""
    # Each user takes three unauthenticated requests to set up (user, access key, policy).
    with moto_server_process(INITIAL_NO_AUTH_ACTION_COUNT=str(3 * len(USERS))) as endpoint:
        iam = boto3.client(
            "iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
        )
        keys = {}
        for name, policy in USERS.items():
            iam.create_user(UserName=name)
            key = iam.create_access_key(UserName=name)["AccessKey"]
            iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps(policy))
            keys[name] = (key["AccessKeyId"], key["SecretAccessKey"])
        admin = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=keys["admin"][0],
            aws_secret_access_key=keys["admin"][1],
        )
        admin.create_bucket(Bucket=IAM_BUCKET)
        with S3Proxy(endpoint, seed=99) as proxy:
            yield {"endpoint": endpoint, "keys": keys, "admin": admin, "proxy": proxy}


@pytest.fixture
def as_user(iam_s3, monkeypatch):
    """``as_user(name)``: the Airflow connection id of a connection with that user's keys, through the proxy."""
    iam_s3["proxy"].clear_faults()
    iam_s3["proxy"].reset_counts()
    iam_s3["proxy"].on_request = None

    def connect(name: str) -> str:
        connection = json.loads(aws_connection(iam_s3["proxy"].url, config_kwargs=NO_RETRIES))
        connection.update(login=iam_s3["keys"][name][0], password=iam_s3["keys"][name][1])
        monkeypatch.setenv(f"AIRFLOW_CONN_MPU_{name.upper().replace('-', '_')}", json.dumps(connection))
        return f"mpu_{name.replace('-', '_')}"

    yield connect
    iam_s3["proxy"].on_request = None
    admin = iam_s3["admin"]
    for upload in incomplete_uploads(admin, IAM_BUCKET):  # never leave anything on the server
        admin.abort_multipart_upload(Bucket=IAM_BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])


def op(conn_id: str, path, key: str, **kwargs: Any) -> MultipartUploadOperator:
    kwargs.setdefault("part_size", 5 * MiB)
    kwargs.setdefault("concurrency", 1)
    kwargs.setdefault("progress_interval", 0)
    # Without task_state_store (Airflow < 3.3) the retry adopts by listing: no quiet window in tests.
    kwargs.setdefault("adopt_quiet_after", 0)
    return MultipartUploadOperator(
        task_id="upload", file=str(path), key=f"s3://{IAM_BUCKET}/{key}", aws_conn_id=conn_id, **kwargs
    )


def test_the_minimal_policy_uploads_resumes_and_aborts(iam_s3, as_user, tmp_path):
    conn, proxy, admin = as_user("minimal"), iam_s3["proxy"], iam_s3["admin"]
    path = make_file(tmp_path / "f", 16 * MiB)
    # Uploads (existence check, listing, create, parts, complete, verification).
    op(conn, path, "minimal/plain.bin").execute({})
    assert sha256_object(admin, IAM_BUCKET, "minimal/plain.bin") == sha256_file(path)
    # Resumes: the first try breaks at part 2 with a retry to come, the retry continues its upload.
    store = FakeStateStore()
    proxy.fail_nth("UploadPart", 2)
    with pytest.raises(S3UploadError):
        op(conn, path, "minimal/resumed.bin", retries=1).execute(
            {"ti": FakeTaskInstance(try_number=1, max_tries=1), "task_state_store": store}
        )
    proxy.on_request = None
    proxy.clear_faults()
    kept = incomplete_uploads(admin, IAM_BUCKET, "minimal/resumed.bin")
    assert len(kept) == 1
    result = op(conn, path, "minimal/resumed.bin", retries=1).execute(
        {"ti": FakeTaskInstance(try_number=2, max_tries=1), "task_state_store": store}
    )
    assert result["upload_id"] == kept[0]["UploadId"] and result["parts_resumed"] == 1
    assert sha256_object(admin, IAM_BUCKET, "minimal/resumed.bin") == sha256_file(path)
    # Aborts: a failure on the last try leaves nothing behind (abort, then ListParts to see it gone).
    proxy.fail_nth("UploadPart", 2)
    with pytest.raises(S3UploadError):
        op(conn, path, "minimal/aborted.bin").execute({"ti": FakeTaskInstance(try_number=1, max_tries=0)})
    assert proxy.count("AbortMultipartUpload", status=204) >= 1
    assert incomplete_uploads(admin, IAM_BUCKET, "minimal/") == []
    assert not [r for r in proxy.requests() if r.status == 403]  # nothing the policy does not allow was asked


@pytest.mark.parametrize("with_store", [True, False], ids=["task_state_store", "no-task_state_store"])
def test_without_list_bucket_multipart_uploads_a_fresh_upload_goes_on_with_one_warning(
    iam_s3, as_user, tmp_path, caplog, capsys, with_store
):
    """moto enforces it: ListMultipartUploads is AccessDenied for this user."""
    conn, proxy, admin = as_user("no-list-uploads"), iam_s3["proxy"], iam_s3["admin"]
    path = make_file(tmp_path / "f", 16 * MiB)
    key = f"no-list-uploads/{with_store}.bin"
    with caplog.at_level(logging.WARNING):
        op(conn, path, key).execute({})
    logged = caplog.text + capsys.readouterr().out
    assert logged.count("s3:ListBucketMultipartUploads") == 1
    assert proxy.count("ListMultipartUploads", status=403) == 1
    assert sha256_object(admin, IAM_BUCKET, key) == sha256_file(path)
    # A failed try keeps its upload only where the retry will look: the task_state_store record.
    store = FakeStateStore() if with_store else None
    proxy.fail_nth("UploadPart", 2)
    context: dict[str, Any] = {"ti": FakeTaskInstance(try_number=1, max_tries=1)}
    if store is not None:
        context["task_state_store"] = store
    with pytest.raises(S3UploadError):
        op(conn, path, key, retries=1, replace=True).execute(context)
    kept = incomplete_uploads(admin, IAM_BUCKET, key)
    if with_store and AIRFLOW_V_3_3_PLUS:
        assert len(kept) == 1 and store.data[STATE_KEY]["upload_id"] == kept[0]["UploadId"]
    else:
        assert kept == []  # nothing would find it: aborted


def test_without_list_bucket_replace_false_fails_clearly_and_replace_true_works(iam_s3, as_user, tmp_path):
    """AWS answers HeadObject and GetObject on a missing key with 403 AccessDenied, not 404, to a role
    without s3:ListBucket. moto does not (it answers 404 whenever s3:GetObject is allowed), so the
    proxy answers the existence check's HeadObject (and the one-byte GetObject that tells a missing
    permission from wrong credentials) with that 403; everything else is moto enforcing the policy."""
    conn, proxy, admin = as_user("no-list-bucket"), iam_s3["proxy"], iam_s3["admin"]
    path = make_file(tmp_path / "f", 6 * MiB)
    proxy.add_fault(Fault(kind="HeadObject", action="error", status=403, code="AccessDenied", times=1))
    proxy.add_fault(Fault(kind="GetObject", action="error", status=403, code="AccessDenied", times=1))
    with pytest.raises(S3UploadError) as info:
        op(conn, path, "no-list-bucket/f.bin").execute({})
    message = str(info.value)
    assert "s3:ListBucket" in message and "replace=True" in message and "403" in message
    assert proxy.count("CreateMultipartUpload") == 0
    op(conn, path, "no-list-bucket/f.bin", replace=True).execute({})
    assert sha256_object(admin, IAM_BUCKET, "no-list-bucket/f.bin") == sha256_file(path)
    assert not [r for r in proxy.requests() if r.status == 403 and r.injected is None]


@pytest.mark.parametrize(
    ("status", "code"), [(501, "NotImplemented"), (405, "MethodNotAllowed"), (403, "AccessDenied")]
)
def test_a_store_without_list_multipart_uploads_still_uploads(
    connection, proxy, s3, tmp_path, caplog, capsys, status, code
):
    """An S3-compatible store that does not implement ListMultipartUploads (or a role without it)."""
    proxy.add_fault(Fault(kind="ListMultipartUploads", action="error", status=status, code=code))
    path = make_file(tmp_path / "f", 11 * MiB)
    key = f"own/no-listing-{status}.bin"
    with caplog.at_level(logging.WARNING):
        MultipartUploadOperator(
            task_id="upload", file=str(path), key=f"s3://{BUCKET}/{key}", aws_conn_id=connection(), part_size=5 * MiB
        ).execute({})
    logged = caplog.text + capsys.readouterr().out
    assert logged.count("s3:ListBucketMultipartUploads") == 1 and code in logged
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert incomplete_uploads(s3, BUCKET, key) == []
