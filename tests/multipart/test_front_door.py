"""The engine's front door: one call from a boto3 client and a path to a verified object, and a resume."""

from __future__ import annotations

import pytest

import airflow_mpu_provider.multipart as multipart
from airflow_mpu_provider.multipart import UploadOptions, upload_file
from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.support.seed import seed_crashed_upload

BUCKET = "test-bucket"


def test_everything_public_is_importable_from_the_package_and_nothing_imports_airflow():
    import subprocess
    import sys

    assert all(hasattr(multipart, name) for name in multipart.__all__)
    probe = "import sys, airflow_mpu_provider.multipart; print(any(m.split('.')[0] == 'airflow' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"


def test_upload_file_uploads_and_verifies(mock_s3, tmp_path):
    path = make_file(tmp_path / "dump.sql", 11 * MiB)
    started = []
    result = upload_file(mock_s3, path, BUCKET, "dumps/a.sql", part_size=5 * MiB, on_upload_started=started.append)
    assert (result.parts, result.parts_sent, result.size) == (3, 3, 11 * MiB)
    assert started == [result.upload_id]
    assert sha256_object(mock_s3, BUCKET, "dumps/a.sql") == sha256_file(path)


def test_upload_file_resumes_an_earlier_upload_sending_only_what_is_missing(mock_s3, tmp_path):
    path = make_file(tmp_path / "dump.sql", 11 * MiB)
    earlier_id = seed_crashed_upload(mock_s3, BUCKET, "dumps/b.sql", path.read_bytes())
    result = upload_file(
        mock_s3,
        path,
        BUCKET,
        "dumps/b.sql",
        part_size=5 * MiB,
        options=UploadOptions(concurrency=2),
        resume_upload_id=earlier_id,
    )
    assert (result.upload_id, result.parts_resumed, result.parts_sent) == (earlier_id, 1, 2)
    assert sha256_object(mock_s3, BUCKET, "dumps/b.sql") == sha256_file(path)
    assert incomplete_uploads(mock_s3, BUCKET) == []


def test_upload_file_refuses_a_part_size_s3_would_refuse_before_any_request(mock_s3, tmp_path):
    path = make_file(tmp_path / "dump.sql", 1 * MiB)
    with pytest.raises(multipart.InvalidUploadRequest, match="5 MiB"):
        upload_file(mock_s3, path, BUCKET, "dumps/c.sql", part_size=1 * MiB)
    assert incomplete_uploads(mock_s3, BUCKET) == []
