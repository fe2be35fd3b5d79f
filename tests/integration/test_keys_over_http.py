"""Keys S3 allows but a URL parser mangles land at exactly that key, and a retry's resume finds them.

``?`` and ``#`` would start a URL's query and fragment, ``%20`` would be decoded, unicode and control
characters must survive signing, the request path and ListMultipartUploads (asked with
``EncodingType=url``). moto refuses most C0 control characters in keys; tab and DEL it accepts.
"""

from __future__ import annotations

import pytest

from airflow_mpu_provider.multipart.errors import S3UploadError
from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator
from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.integration.conftest import BUCKET, FakeTaskInstance

pytestmark = pytest.mark.integration

NAMES = {
    "query-fragment-percent": "a?b#c%20d",
    "unicode": "ünïcödé 日本/🚀 + space.bin",
    "control-characters": "tab\there\x7fdel.bin",
    "colon": "db:prod/app.dump",
}


@pytest.mark.parametrize("form", ["s3-url", "bucket-argument"])
@pytest.mark.parametrize("name", sorted(NAMES))
def test_awkward_key_lands_exactly_there_and_resume_finds_it(connection, proxy, s3, tmp_path, form, name):
    prefix = f"keys/{form}/{name}/"
    key = prefix + NAMES[name]
    target = {"key": f"s3://{BUCKET}/{key}"} if form == "s3-url" else {"bucket": BUCKET, "key": key}
    path = make_file(tmp_path / "f", 11 * MiB)
    conn_id = connection(config_kwargs={"retries": {"mode": "standard", "max_attempts": 0}})

    def operator() -> MultipartUploadOperator:
        return MultipartUploadOperator(
            task_id="upload",
            file=str(path),
            aws_conn_id=conn_id,
            part_size=5 * MiB,
            concurrency=1,
            adopt_quiet_after=0,  # no task_state_store here: the retry adopts the kept upload by listing, at once
            **target,
        )

    # Part 2 "breaks": armed before the first request and decided as each UploadPart arrives.
    proxy.fail_nth("UploadPart", 2)
    with pytest.raises(S3UploadError):
        operator().execute({"ti": FakeTaskInstance(max_tries=1)})
    proxy.clear_faults()
    (kept,) = incomplete_uploads(s3, BUCKET, prefix)
    assert kept["Key"] == key
    # Part 1 is stored; the single worker may also have sent part 3 before part 2's failure stopped it.
    stored = s3.list_parts(Bucket=BUCKET, Key=key, UploadId=kept["UploadId"]).get("Parts", [])
    assert 1 in {p["PartNumber"] for p in stored}

    result = operator().execute({"ti": FakeTaskInstance(try_number=2, max_tries=1)})

    assert result["key"] == key
    assert result["upload_id"] == kept["UploadId"]  # found by ListMultipartUploads, under exactly this key
    assert (result["parts_resumed"], result["parts_sent"]) == (len(stored), 3 - len(stored))
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)  # botocore decodes ListObjectsV2 itself
    assert [o["Key"] for o in listed.get("Contents", [])] == [key]
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert incomplete_uploads(s3, BUCKET, prefix) == []
