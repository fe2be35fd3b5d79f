"""A max_bandwidth timetable over HTTP: the cap switches while the upload runs, and no period goes faster
than its cap (a lower bound on the time, which a slow machine cannot break; the upper side is the
benchmark's)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator
from tests.conftest import MiB, make_file, sha256_file, sha256_object
from tests.integration.conftest import BUCKET, FakeTaskInstance

pytestmark = pytest.mark.integration

SLOW, FAST = 2 * MiB, 8 * MiB
SIZE = 24 * MiB


def test_the_cap_switches_at_the_timetables_change_and_each_period_keeps_its_cap(
    connection, proxy, s3, tmp_path, capfd
):
    now = datetime.now(UTC)
    if now.hour == 23 and now.minute == 59:
        time.sleep(61 - now.second)  # HH:MM:SS entries must not cross midnight
        now = datetime.now(UTC)
    switch = now.replace(microsecond=0) + timedelta(seconds=4)
    timetable = {(now - timedelta(hours=1)).strftime("%H:%M:%S"): SLOW, switch.strftime("%H:%M:%S"): FAST}
    key = "bandwidth/timetable.bin"
    path = make_file(tmp_path / "dump", SIZE)
    operator = MultipartUploadOperator(
        task_id="timetable",
        file=str(path),
        key=f"s3://{BUCKET}/{key}",
        aws_conn_id=connection(),
        part_size=5 * MiB,
        concurrency=3,
        max_bandwidth=timetable,
        window_timezone="UTC",
        progress_interval=0,
        replace=True,
    )
    started, started_at = time.monotonic(), datetime.now(UTC)
    result = operator.execute({"ti": FakeTaskInstance()})
    seconds = time.monotonic() - started
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert result["bytes_sent"] == SIZE
    out, err = capfd.readouterr()  # the task log (structlog writes it to the process's output here)
    assert "Bandwidth timetable: 8.0 MiB/s from now on" in out + err
    # Until the switch at most SLOW per second (plus the quarter second of it a bucket may let through at once),
    # after it at most FAST (the same): the upload cannot have taken less than this.
    slow_for = max(0.0, (switch - started_at).total_seconds())
    through_slow = SLOW * slow_for + SLOW / 4
    if through_slow >= SIZE:
        floor = (SIZE - SLOW / 4) / SLOW
    else:
        floor = slow_for + max(0.0, SIZE - through_slow - FAST / 4) / FAST
    assert seconds >= floor, f"{SIZE:,} bytes in {seconds:.2f} s: faster than the timetable allows ({floor:.2f} s)"
    s3.delete_object(Bucket=BUCKET, Key=key)
