"""Over plain HTTP, through the operator's own client: parts that carry Content-MD5 go out UNSIGNED-PAYLOAD.

The proxy records what crosses the wire. moto checks Content-MD5 on receipt; the object must be the file.
"""

from __future__ import annotations

import base64
import hashlib

import pytest

from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator
from tests.conftest import MiB, make_file, sha256_file, sha256_object
from tests.integration.conftest import BUCKET, FakeTaskInstance

pytestmark = pytest.mark.integration


def test_operator_over_http_sends_md5_parts_unsigned_and_the_object_is_the_file(connection, proxy, s3, tmp_path):
    conn_id = connection()
    path = make_file(tmp_path / "f", 11 * MiB)
    proxy.reset_counts()
    result = MultipartUploadOperator(
        task_id="upload",
        file=str(path),
        key=f"s3://{BUCKET}/signing/unsigned.bin",
        aws_conn_id=conn_id,
        part_size=5 * MiB,
        progress_interval=0,
    ).execute({"ti": FakeTaskInstance()})
    parts = [r for r in proxy.requests() if r.kind == "UploadPart" and r.status == 200]
    assert len(parts) == result["parts_sent"] == 3
    headers = [{k.lower(): v for k, v in r.headers.items()} for r in parts]
    assert all(h["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD" for h in headers), headers
    data = path.read_bytes()
    offsets = sorted((r.part_number - 1) * 5 * MiB for r in parts)
    expected_md5s = sorted(base64.b64encode(hashlib.md5(data[o : o + 5 * MiB]).digest()).decode() for o in offsets)
    assert sorted(h["content-md5"] for h in headers) == expected_md5s
    assert sha256_object(s3, BUCKET, "signing/unsigned.bin") == sha256_file(path)
    s3.delete_object(Bucket=BUCKET, Key="signing/unsigned.bin")
