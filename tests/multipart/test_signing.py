"""Payload signing of UploadPart: SHA-256 of the body only where no signed digest binds it.

Requests are answered locally by a ``before-send`` handler (nothing goes on the wire), after botocore
signed them, so each test sees exactly the headers S3 would get. Both of botocore's SigV4 signers are
tried: awscrt's (used whenever awscrt is installed, as it is here) and botocore's pure-Python one.
"""

from __future__ import annotations

import hashlib
from typing import Any

import boto3
import botocore.auth
import pytest
from botocore.awsrequest import AWSResponse
from botocore.compat import HAS_CRT
from botocore.config import Config

from airflow_mpu_provider.multipart.checksums.digests import PartDigest, digest_part
from airflow_mpu_provider.multipart.signing import md5_spares_the_payload_hash, sign_payload_only_when_needed
from airflow_mpu_provider.multipart.upload import MultipartUpload

DATA = b"part bytes " * 1000
UNSIGNED = "UNSIGNED-PAYLOAD"
SIGNERS = ["python", "crt"] if HAS_CRT else ["python"]


@pytest.fixture(params=SIGNERS)
def signer(request, monkeypatch) -> str:
    """Run the test with awscrt's S3 signer and with botocore's Python one."""
    if request.param == "python":
        monkeypatch.setitem(botocore.auth.AUTH_TYPE_MAPS, "s3v4", botocore.auth.S3SigV4Auth)
    return request.param


class _Empty:
    def stream(self, **_: Any):
        yield b""


def recording_client(scheme: str, *, s3_config: dict[str, Any] | None = None, fail_first: int = 0):
    """A client whose UploadParts are answered locally; returns it and the list of headers sent."""
    client = boto3.client(
        "s3",
        endpoint_url=f"{scheme}://127.0.0.1:9",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3=s3_config, retries={"mode": "standard", "max_attempts": 3}),
    )
    sent: list[dict[str, str]] = []

    def answer(request, **_: Any) -> AWSResponse:
        sent.append({k.lower(): (v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items()})
        status = 500 if len(sent) <= fail_first else 200
        return AWSResponse(request.url, status, {"ETag": f'"{hashlib.md5(DATA).hexdigest()}"'}, _Empty())

    client.meta.events.register("before-send.s3.UploadPart", answer)
    return client, sent


def send_part(client, *, algorithm: str | None, with_md5: bool) -> PartDigest:
    upload = MultipartUpload(client, "bucket", "key", upload_id="u1", checksum_algorithm=algorithm)
    digest = digest_part(1, DATA, algorithm=algorithm, with_md5=with_md5)
    upload.put_part(1, DATA, digest)
    return digest


def signed_headers(headers: dict[str, str]) -> set[str]:
    authorization = headers["authorization"]
    return set(authorization.split("SignedHeaders=")[1].split(",")[0].split(";"))


@pytest.mark.parametrize("algorithm", ["CRC32C", None])
def test_http_part_with_content_md5_is_sent_unsigned_and_the_md5_is_signed(signer, algorithm):
    client, sent = recording_client("http")
    digest = send_part(client, algorithm=algorithm, with_md5=True)
    [headers] = sent
    assert headers["x-amz-content-sha256"] == UNSIGNED
    assert headers["content-md5"] == digest.content_md5
    assert {"content-md5", "content-length", "x-amz-content-sha256"} <= signed_headers(headers)


def test_http_part_with_only_a_crc_keeps_its_sha256_payload_signature(signer):
    """A CRC can be forged by anyone who can rewrite a plain-HTTP request: the body stays signed."""
    client, sent = recording_client("http")
    digest = send_part(client, algorithm="CRC32C", with_md5=False)
    [headers] = sent
    assert headers["x-amz-checksum-crc32c"] == digest.checksum
    assert "content-md5" not in headers
    assert headers["x-amz-content-sha256"] == hashlib.sha256(DATA).hexdigest()


def test_http_part_with_a_signed_sha256_checksum_is_sent_unsigned(signer):
    client, sent = recording_client("http")
    digest = send_part(client, algorithm="SHA256", with_md5=False)
    [headers] = sent
    assert headers["x-amz-checksum-sha256"] == digest.checksum
    assert headers["x-amz-content-sha256"] == UNSIGNED
    assert "x-amz-checksum-sha256" in signed_headers(headers)


@pytest.mark.parametrize("with_md5", [True, False])
def test_https_is_unchanged_unsigned_with_any_checksum(signer, with_md5):
    """botocore's own rule over TLS: a checksum header (ours, declared to it) or Content-MD5 suffices."""
    client, sent = recording_client("https")
    send_part(client, algorithm="CRC32C", with_md5=with_md5)
    [headers] = sent
    assert headers["x-amz-content-sha256"] == UNSIGNED


def test_https_part_without_any_checksum_is_signed_as_botocore_decides(signer):
    client, sent = recording_client("https")
    client.upload_part(Bucket="bucket", Key="key", UploadId="u1", PartNumber=1, Body=DATA)
    sign_payload_only_when_needed(client)
    client.upload_part(Bucket="bucket", Key="key", UploadId="u1", PartNumber=1, Body=DATA)
    # The same whether our handler is registered or not (boto3 may add its own CRC32 header here).
    assert sent[0]["x-amz-content-sha256"] == sent[1]["x-amz-content-sha256"]


def test_http_user_setting_wins_over_the_md5_rule(signer):
    client, sent = recording_client("http", s3_config={"payload_signing_enabled": True})
    send_part(client, algorithm="CRC32C", with_md5=True)
    [headers] = sent
    assert headers["x-amz-content-sha256"] == hashlib.sha256(DATA).hexdigest()


def test_http_retried_part_is_sent_unsigned_every_time(signer):
    client, sent = recording_client("http", fail_first=1)
    send_part(client, algorithm="CRC32C", with_md5=True)
    assert len(sent) == 2
    assert [h["x-amz-content-sha256"] for h in sent] == [UNSIGNED, UNSIGNED]


def test_http_other_operations_and_the_client_config_are_untouched(signer):
    """Only this request's signing changes: the client's configuration stays as the user built it."""
    client, sent = recording_client("http")
    send_part(client, algorithm="CRC32C", with_md5=True)
    assert (client.meta.config.s3 or {}).get("payload_signing_enabled") is None
    send_part(client, algorithm="CRC32C", with_md5=False)
    assert [h["x-amz-content-sha256"] for h in sent] == [UNSIGNED, hashlib.sha256(DATA).hexdigest()]


@pytest.mark.parametrize(
    ("endpoint", "s3_config", "every_part"),
    [
        ("http://127.0.0.1:9000", None, True),  # plain HTTP: an MD5 spares the SHA-256 payload signature
        ("https://s3.eu-west-1.amazonaws.com", None, False),  # HTTPS: checksums already unsign the payload
        ("http://127.0.0.1:9000", {"payload_signing_enabled": True}, False),  # the user decided: obeyed
        ("http://127.0.0.1:9000", {"payload_signing_enabled": False}, False),
    ],
)
def test_every_part_carries_an_md5_only_where_it_spares_the_payload_hash(endpoint, s3_config, every_part):
    config = Config(s3=s3_config) if s3_config else None
    client = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-1", config=config)
    assert md5_spares_the_payload_hash(client) is every_part
