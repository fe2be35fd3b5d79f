"""What an error's hint says happens next is what happens next."""

from __future__ import annotations

import pytest

from airflow_mpu_provider.multipart.errors import ABORTED, KEPT_FOR_RETRY, S3UploadError
from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator
from tests.conftest import MiB, incomplete_uploads, make_file
from tests.integration.conftest import BUCKET, FakeTaskInstance
from tests.support.s3_proxy import Fault

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("kind", "status", "code", "kept"),
    [
        ("CompleteMultipartUpload", 400, "InvalidPart", False),
        ("UploadPart", 400, "EntityTooSmall", False),
        ("UploadPart", 400, "BadDigest", True),
        ("UploadPart", 403, "AccessDenied", True),
        ("UploadPart", 501, "NotImplemented", True),  # a store refusing a checksum header
    ],
)
def test_the_hint_tells_what_the_engine_then_does(connection, proxy, s3, tmp_path, kind, status, code, kept):
    """With retries left: the upload is kept exactly when the hint says it may be, else aborted."""
    key = f"hints/{code}.bin"
    conn_id = connection(config_kwargs={"retries": {"mode": "standard", "max_attempts": 0}})
    proxy.add_fault(Fault(kind=kind, action="error", status=status, code=code, times=1))
    op = MultipartUploadOperator(
        task_id="upload",
        file=str(make_file(tmp_path / "f", 6 * MiB)),
        key=f"s3://{BUCKET}/{key}",
        aws_conn_id=conn_id,
        part_size=5 * MiB,
        concurrency=1,
        progress_interval=0,
        adopt_quiet_after=0,  # without task_state_store, kept only if the retry can adopt it (by listing)
    )
    with pytest.raises(S3UploadError, match=code) as caught:
        op.execute({"ti": FakeTaskInstance(max_tries=1)})  # a retry will follow
    left = incomplete_uploads(s3, BUCKET, key)
    if kept:
        assert KEPT_FOR_RETRY in str(caught.value)
        assert len(left) == 1
        s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=left[0]["UploadId"])
    else:
        assert ABORTED in str(caught.value)
        assert left == []
