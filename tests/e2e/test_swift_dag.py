"""A real DAG run through Airflow against OpenStack Swift's S3 API (the second real store, tests/swift).

The run uses the e2e harness (``run_dag``: ``airflow dags test``, its own task logs) with the proxy in
front of Swift instead of moto, and ``aws_default`` pointing there with Swift's tempauth credentials.
"""

from __future__ import annotations

import pytest

from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.support.s3_proxy import S3Proxy
from tests.support.seed import seed_crashed_upload
from tests.support.swift_server import aws_connection
from tests.swift.conftest import BUCKET, wait_until_swift_shows_it_past

pytestmark = [pytest.mark.e2e, pytest.mark.swift]


@pytest.fixture
def proxy(swift_endpoint, swift_s3):  # run_dag's proxy: in front of Swift here, not moto
    with S3Proxy(swift_endpoint, seed=18) as p:
        yield p


def test_a_dag_run_at_the_defaults_resumes_a_crashed_upload_and_verifies_it_on_swift(
    run_dag,
    proxy,
    swift_s3,
    tmp_path,
):
    """The operator through Airflow at its defaults, as a user runs it against Swift: a new run finds a
    crashed run's upload with ListMultipartUploads, verifies the stored parts by their MD5 ETags (Swift
    keeps no checksums), sends only the rest, completes and verifies the object. (With checksums off the
    same run passes today; it is not repeated here, a DAG run costs ~25 s.)"""
    path = make_file(tmp_path / "dump.sql", 30 * MiB, seed=18)
    key = "e2e/swift-defaults.bin"
    seed_crashed_upload(swift_s3, BUCKET, key, path.read_bytes(), (1, 2, 3))
    wait_until_swift_shows_it_past(swift_s3, key)  # adopt_quiet_after=0 needs it
    try:
        result = run_dag(
            file=path,
            key=f"s3://{BUCKET}/{key}",
            part_size=5 * MiB,
            adopt_quiet_after=0,
            AIRFLOW_CONN_AWS_DEFAULT=aws_connection(proxy.url),
        )
        assert result.succeeded, result.text[-5000:]
        assert result.shows("with ListMultipartUploads")
        assert proxy.count("UploadPart", status=200) == 3  # parts 4..6 only
        assert proxy.count("CreateMultipartUpload") == 0
        assert sha256_object(swift_s3, BUCKET, key) == sha256_file(path)
        assert incomplete_uploads(swift_s3, BUCKET, key) == []
    finally:
        for upload in incomplete_uploads(swift_s3, BUCKET, key):
            swift_s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload["UploadId"])
        swift_s3.delete_object(Bucket=BUCKET, Key=key)
