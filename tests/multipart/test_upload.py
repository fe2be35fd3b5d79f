from __future__ import annotations

import pytest

from airflow_mpu_provider.multipart.errors import S3UploadError
from airflow_mpu_provider.multipart.units import MiB
from airflow_mpu_provider.multipart.upload import MultipartUpload
from tests.conftest import incomplete_uploads, send_part


def test_create_put_part_complete_makes_the_object(mock_s3):
    chunks = [b"a" * (5 * MiB), b"b" * (5 * MiB), b"tail"]
    upload = MultipartUpload(mock_s3, "test-bucket", "seq")
    upload.create()
    records = [send_part(upload, number, chunk) for number, chunk in enumerate(chunks, 1)]
    upload.complete(records)
    assert mock_s3.get_object(Bucket="test-bucket", Key="seq")["Body"].read() == b"".join(chunks)
    assert [(p.number, p.size) for p in records] == [(1, 5 * MiB), (2, 5 * MiB), (3, 4)]


def test_abort_of_an_upload_with_stored_parts_leaves_nothing(mock_s3):
    upload = MultipartUpload(mock_s3, "test-bucket", "boom")
    upload.create()
    send_part(upload, 1, b"a" * (5 * MiB))
    upload.abort()
    assert upload.aborted
    assert incomplete_uploads(mock_s3, "test-bucket") == []
    assert "Contents" not in mock_s3.list_objects_v2(Bucket="test-bucket")


def test_one_empty_part_completes_as_a_zero_byte_object(mock_s3):
    upload = MultipartUpload(mock_s3, "test-bucket", "empty")
    upload.create()
    upload.complete([send_part(upload, 1, b"")])
    assert mock_s3.head_object(Bucket="test-bucket", Key="empty")["ContentLength"] == 0


def test_entity_too_small_becomes_a_clear_error(mock_s3):
    upload = MultipartUpload(mock_s3, "test-bucket", "small")
    upload.create()
    records = [send_part(upload, 1, b"a" * 100), send_part(upload, 2, b"b" * 100)]
    with pytest.raises(S3UploadError, match="EntityTooSmall.*5 MiB") as info:
        upload.complete(records)
    assert info.value.upload_id == upload.upload_id
    upload.abort()
    assert incomplete_uploads(mock_s3, "test-bucket") == []


def test_no_such_upload_becomes_a_clear_error(mock_s3):
    upload = MultipartUpload(mock_s3, "test-bucket", "gone", upload_id="does-not-exist")
    with pytest.raises(S3UploadError, match="NoSuchUpload.*no longer exists"):
        upload.list_parts()


def test_abort_is_idempotent(mock_s3):
    upload = MultipartUpload(mock_s3, "test-bucket", "k")
    upload.create()
    upload.abort()
    upload.abort()
    assert incomplete_uploads(mock_s3, "test-bucket") == []


def test_list_parts_paginates_past_1000(mock_s3, monkeypatch):
    upload = MultipartUpload(mock_s3, "test-bucket", "many", checksum_algorithm=None)
    upload.create()
    for number in (1, 2, 3):
        send_part(upload, number, b"p")
    real = mock_s3.list_parts
    calls = []

    def one_per_page(**kwargs):
        calls.append(kwargs["PartNumberMarker"])
        return real(MaxParts=1, **kwargs)

    monkeypatch.setattr(mock_s3, "list_parts", one_per_page)
    parts, _ = upload.list_parts()
    assert [p["PartNumber"] for p in parts] == [1, 2, 3]
    assert calls == [0, 1, 2]


@pytest.mark.parametrize(("scheme", "signed"), [("https", False), ("http", True)])
def test_precomputed_checksum_lets_botocore_skip_payload_signing_over_tls_only(scheme, signed):
    """Hashing each byte once: over HTTPS our CRC32C replaces botocore's SHA-256 of the payload."""
    import boto3
    from botocore.awsrequest import AWSResponse

    from airflow_mpu_provider.multipart.checksums.digests import digest_part

    client = boto3.client("s3", endpoint_url=f"{scheme}://127.0.0.1:9", region_name="us-east-1")
    sent = {}

    class Raw:
        def stream(self):
            yield b""

    def capture(request, **_):  # answer locally: nothing goes on the wire
        sent.update(request.headers)
        return AWSResponse(request.url, 200, {"ETag": '"x"'}, Raw())

    client.meta.events.register("before-send.s3.UploadPart", capture)
    upload = MultipartUpload(client, "bucket", "key", upload_id="u1")
    data = b"d" * 1024
    upload.put_part(1, data, digest_part(1, data, algorithm="CRC32C", with_md5=False))
    assert sent["x-amz-checksum-crc32c"] == digest_part(1, data, algorithm="CRC32C", with_md5=False).checksum.encode()
    headers = {k.lower(): v for k, v in sent.items()}
    assert (headers["x-amz-content-sha256"] != b"UNSIGNED-PAYLOAD") is signed
