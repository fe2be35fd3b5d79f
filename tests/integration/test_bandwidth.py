"""max_bandwidth over HTTP: an upload never finishes faster than its bytes allow at the cap (a lower
bound, which a slow machine cannot break; the benchmark shows how close to the cap it gets), for a file,
for a stream and through retries; and a kill does not wait for bandwidth.
"""

from __future__ import annotations

import threading
import time

import pytest

from airflow_mpu_provider.multipart.errors import UploadCancelledError
from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator
from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.integration.conftest import BUCKET, FakeTaskInstance
from tests.support.s3_proxy import Fault, wait_until

pytestmark = pytest.mark.integration

#: 4 MiB/s: 12 MiB take at least 3 s, short enough for the suite, long enough to be far from noise.
CAP = 4 * MiB
SIZE = 12 * MiB


def capped(conn_id: str, key: str, **kwargs) -> MultipartUploadOperator:
    kwargs.setdefault("part_size", 5 * MiB)
    kwargs.setdefault("concurrency", 3)
    kwargs.setdefault("max_bandwidth", CAP)
    kwargs.setdefault("progress_interval", 0)
    kwargs.setdefault("replace", True)
    return MultipartUploadOperator(task_id="capped", key=f"s3://{BUCKET}/{key}", aws_conn_id=conn_id, **kwargs)


def timed_execute(operator: MultipartUploadOperator) -> tuple[dict, float]:
    started = time.monotonic()
    result = operator.execute({"ti": FakeTaskInstance()})
    return result, time.monotonic() - started


def part_bytes_received(proxy) -> int:
    """Part body bytes the store side received, failed attempts included."""
    return sum(r.body_bytes for r in proxy.requests() if r.kind == "UploadPart")


def test_a_capped_file_upload_never_finishes_faster_than_size_over_cap(connection, proxy, s3, tmp_path):
    key = "bandwidth/file.bin"
    path = make_file(tmp_path / "dump", SIZE)
    result, seconds = timed_execute(capped(connection(), key, file=str(path)))
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert result["parts"] == 3 and proxy.count("UploadPart", status=200) == 3  # parallel parts share one cap
    assert part_bytes_received(proxy) == SIZE
    assert seconds >= SIZE / CAP, f"{SIZE:,} bytes in {seconds:.3f} s: faster than max_bandwidth={CAP:,} allows"
    s3.delete_object(Bucket=BUCKET, Key=key)


def test_a_capped_stream_never_finishes_faster_than_size_over_cap(connection, proxy, s3):
    key = "bandwidth/stream.bin"
    command = f"head -c {SIZE} /dev/zero | tr '\\0' 'a'"
    result, seconds = timed_execute(capped(connection(), key, command=command))
    assert result["size"] == SIZE and s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == SIZE
    assert part_bytes_received(proxy) == SIZE
    assert seconds >= SIZE / CAP, f"{SIZE:,} bytes in {seconds:.3f} s: faster than max_bandwidth={CAP:,} allows"
    assert incomplete_uploads(s3, BUCKET, key) == []
    s3.delete_object(Bucket=BUCKET, Key=key)


def test_bytes_sent_again_by_retries_count_against_the_cap(connection, proxy, s3, tmp_path):
    """Connections reset after 2 MiB of a part: botocore sends those parts again, and the re-sent bytes use
    the link too, so the lower bound is every byte the store side received, not just the file's size."""
    key = "bandwidth/retried.bin"
    path = make_file(tmp_path / "dump", SIZE)
    fault = Fault(kind="UploadPart", action="reset", times=2, after_bytes=2 * MiB)
    proxy.add_fault(fault)
    _, seconds = timed_execute(capped(connection(), key, file=str(path)))
    assert proxy.injections(fault) == 2
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    received = part_bytes_received(proxy)
    assert received >= SIZE + 2 * 2 * MiB  # the two broken attempts' bytes came on top
    assert seconds >= received / CAP, f"{received:,} bytes in {seconds:.3f} s: faster than the cap allows"
    s3.delete_object(Bucket=BUCKET, Key=key)


def test_on_kill_does_not_wait_for_bandwidth(connection, proxy, s3, tmp_path):
    """At 100 bytes/s each part waits 41 s and more for its next 4 KiB write (a day and more for the file);
    on_kill ends execute() and the upload long before that, because the parts wait on the cancel event."""
    key = "bandwidth/killed.bin"
    path = make_file(tmp_path / "dump", SIZE)
    operator = capped(connection(), key, file=str(path), max_bandwidth=100)
    outcome: list = []

    def execute() -> None:
        try:
            outcome.append(operator.execute({"ti": FakeTaskInstance()}))
        except BaseException as e:
            outcome.append(e)

    runner = threading.Thread(target=execute, name="execute")
    runner.start()
    try:
        assert proxy.wait_in_flight("UploadPart", 3, timeout=120), "the parts never were in flight"
        operator.on_kill()
        runner.join(60)
        assert not runner.is_alive(), "execute() still runs 60 s after on_kill: the parts waited for bandwidth"
    finally:
        runner.join(300)
    assert len(outcome) == 1 and isinstance(outcome[0], UploadCancelledError), outcome
    assert wait_until(lambda: incomplete_uploads(s3, BUCKET, key) == [], timeout=60, interval=0.05)
    assert proxy.count("UploadPart", status=200) == 0
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=key)
