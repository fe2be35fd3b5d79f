"""Wrong credentials against a server that checks them (moto with IAM authentication switched on)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest

from airflow_mpu_provider.multipart.errors import S3UploadError
from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator
from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.support.local_airflow import aws_connection, moto_server_process

pytestmark = pytest.mark.integration

BUCKET = "auth-bucket"
WRONG_SECRET = "wrong-secret-key-that-must-not-leak-42"


@pytest.fixture(scope="module")
def authenticating_s3() -> Iterator[tuple[str, dict[str, str]]]:
    """A moto server that authenticates every request after the three that create a user and its key."""
    # The first three requests (create the user, its key, its policy) are let through unauthenticated.
    with moto_server_process(INITIAL_NO_AUTH_ACTION_COUNT="3") as endpoint:
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="airflow")
        key = iam.create_access_key(UserName="airflow")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="airflow", PolicyName="s3", PolicyDocument=json.dumps(policy))
        credentials = {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
        client(endpoint, credentials["id"], credentials["secret"]).create_bucket(Bucket=BUCKET)
        yield endpoint, credentials


def client(endpoint: str, key_id: str, secret: str):
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key_id, aws_secret_access_key=secret
    )


def run_upload(monkeypatch, endpoint: str, key_id: str, secret: str, path, key: str) -> dict:
    connection = json.loads(
        aws_connection(endpoint, config_kwargs={"retries": {"mode": "standard", "max_attempts": 0}})
    )
    connection.update(login=key_id, password=secret)
    monkeypatch.setenv("AIRFLOW_CONN_MPU_AUTH", json.dumps(connection))
    return MultipartUploadOperator(
        task_id="upload",
        file=str(path),
        key=f"s3://{BUCKET}/{key}",
        aws_conn_id="mpu_auth",
        part_size=5 * MiB,
    ).execute({})


def test_valid_credentials_upload(authenticating_s3, monkeypatch, tmp_path):
    endpoint, creds = authenticating_s3
    path = make_file(tmp_path / "f", 6 * MiB)
    run_upload(monkeypatch, endpoint, creds["id"], creds["secret"], path, "ok.bin")
    s3 = client(endpoint, creds["id"], creds["secret"])
    assert sha256_object(s3, BUCKET, "ok.bin") == sha256_file(path)


@pytest.mark.parametrize(
    ("wrong", "code", "hint"),
    [("secret", "SignatureDoesNotMatch", "secret key is wrong"), ("key id", "InvalidAccessKeyId", "not known")],
)
def test_wrong_credentials_fail_clearly_create_nothing_and_leak_nothing(
    authenticating_s3, monkeypatch, tmp_path, wrong, code, hint
):
    endpoint, creds = authenticating_s3
    key_id = creds["id"] if wrong == "secret" else "AKIAUNKNOWN000000000"
    path = make_file(tmp_path / "f", 6 * MiB)
    with pytest.raises(S3UploadError) as info:
        run_upload(monkeypatch, endpoint, key_id, WRONG_SECRET, path, f"wrong-{code}.bin")
    assert info.value.code == code
    assert hint in str(info.value) and f"s3://{BUCKET}/wrong-{code}.bin" in str(info.value)
    assert WRONG_SECRET not in f"{info.value} {info.value!r}"
    s3 = client(endpoint, creds["id"], creds["secret"])
    assert incomplete_uploads(s3, BUCKET) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="wrong-")
