"""Adaptive parallelism against a store that throttles: SlowDown (503) to more than N parts in flight.

The upload starts at 8 parts in flight; the store (the proxy) answers SlowDown to every UploadPart that
arrives while more than N are in flight. The engine must settle at or below N and complete, and no part
may come near exhausting its retries (the hook's client allows 11 attempts).
"""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from airflow_mpu_provider.multipart import UploadOptions, upload_file
from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator
from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.integration.conftest import BUCKET
from tests.support.local_airflow import s3_client
from tests.support.s3_proxy import Fault

pytestmark = pytest.mark.integration

STORE_LIMIT = 3


def test_settles_at_or_below_what_the_store_allows_and_completes(connection, proxy, s3, tmp_path):
    path = make_file(tmp_path / "f", 80 * MiB)
    fault = Fault(kind="UploadPart", action="error", status=503, code="SlowDown", above_in_flight=STORE_LIMIT)
    proxy.add_fault(fault)
    op = MultipartUploadOperator(
        task_id="upload",
        file=str(path),
        key=f"s3://{BUCKET}/adaptive/slowdown.bin",
        aws_conn_id=connection(),
        part_size=5 * MiB,  # 16 parts; concurrency left at its default: adaptive, starting at 8
        progress_interval=0,
    )
    result = op.execute({})
    assert proxy.injections(fault) >= 1  # the store did throttle the first 8 parts in flight
    assert result["concurrency_settled"] <= STORE_LIMIT
    assert sha256_object(s3, BUCKET, "adaptive/slowdown.bin") == sha256_file(path)
    assert incomplete_uploads(s3, BUCKET) == []
    throttled = Counter(r.part_number for r in proxy.requests() if r.kind == "UploadPart" and r.status == 503)
    assert max(throttled.values()) <= 3, f"a part was throttled {max(throttled.values())} times: {throttled}"


def test_a_store_that_answers_slowly_gets_more_parts_in_flight_from_the_start(proxy, s3, tmp_path, caplog):
    """A store whose quickest answer (CreateMultipartUpload, here delayed 0.2 s) is far away: the upload starts at
    the count its round trip calls for (8 per 25 ms, within the bounds), not at 8."""
    path = make_file(tmp_path / "f", 40 * MiB)
    proxy.add_fault(Fault(kind="CreateMultipartUpload", action="delay", delay=0.2))
    caplog.set_level(logging.INFO)
    options = UploadOptions(max_concurrency=20, progress_interval=0)
    upload_file(s3_client(proxy.url), path, BUCKET, "adaptive/far.bin", part_size=5 * MiB, options=options)
    assert "Parts in flight: 8 -> 20 (the store answered in" in caplog.text
    assert sha256_object(s3, BUCKET, "adaptive/far.bin") == sha256_file(path)
