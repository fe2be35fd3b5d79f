"""Progress in bytes as they go on the wire, over HTTP (issue #20, item 3).

Progress used to count finished parts only: with parts sharing a bandwidth cap, or parts slower than
the progress interval, every line said "0 B of ..." while data flowed. Here parts take several progress
intervals each (a capped upload, and an uncapped one whose store reads slowly), and the task log's
progress lines must show bytes before any part has finished, growing from line to line.
"""

from __future__ import annotations

import logging
import re

import pytest

from airflow_mpu_provider.hooks.multipart import S3MultipartHook
from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator
from tests.conftest import MiB, make_file, sha256_file, sha256_object
from tests.integration.conftest import BUCKET, FakeTaskInstance
from tests.support.s3_proxy import Fault

pytestmark = pytest.mark.integration

#: "s3://b/k: 7.5 MiB of 20.0 MiB (37.5%), 0/4 parts done, 3.7 MiB/s, ETA 3s"
#: (and the old "... (0.0%), part 0/4, 0.0 MB/s, ...", so that the test fails on old code for what it checks)
LINE = re.compile(r": (?P<done>[\d.]+) (?P<unit>B|KiB|MiB) of [\d.]+ MiB \([\d.]+%\), (?:part )?(?P<parts>\d+)/\d+")
UNITS = {"B": 1, "KiB": 1024, "MiB": MiB}


def progress_lines(caplog) -> list[tuple[int, int, str]]:
    """(bytes done, parts done, line) of every progress line of the task log, the summary excluded."""
    found = []
    for record in caplog.records:
        line = record.getMessage()
        match = LINE.search(line)
        if record.name == "tests.progress_bytes" and match and "elapsed" not in line:
            found.append((int(float(match["done"]) * UNITS[match["unit"]]), int(match["parts"]), line))
    return found


@pytest.mark.parametrize("capped", [True, False], ids=["capped", "uncapped-slow-store"])
def test_progress_lines_show_bytes_moving_before_any_part_finishes(
    connection, proxy, s3, tmp_path, monkeypatch, caplog, capped
):
    task_log = logging.getLogger("tests.progress_bytes")  # caplog does not see the task SDK's structlog logger
    monkeypatch.setattr(S3MultipartHook, "log", property(lambda self: task_log))
    caplog.set_level("INFO", logger="tests.progress_bytes")
    if capped:  # 4 parts of 5 MiB sharing 4 MiB/s: 5 s, every part finishing near the end
        size, part_size, settings = 20 * MiB, 5 * MiB, {"max_bandwidth": 4 * MiB}
    else:  # 2 parts of 12 MiB, each read by the store side at 2 MiB/s: 6 s, though the client is not capped.
        # Parts larger than what loopback's socket buffers swallow at once, so that bytes go out as the store reads.
        size, part_size, settings = 24 * MiB, 12 * MiB, {}
        proxy.add_fault(Fault("UploadPart", "throttle", rate=2 * MiB))
    key = f"progress/{'capped' if capped else 'uncapped'}.bin"
    path = make_file(tmp_path / "f", size)
    MultipartUploadOperator(
        task_id="progress",
        file=str(path),
        key=f"s3://{BUCKET}/{key}",
        aws_conn_id=connection(),
        part_size=part_size,
        concurrency=4,
        progress_interval=1,
        replace=True,
        **settings,
    ).execute({"ti": FakeTaskInstance()})
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    lines = progress_lines(caplog)
    before_any_part = [(done, line) for done, parts, line in lines if parts == 0]
    assert before_any_part, f"no progress line before the first part finished: {lines}"
    # Bytes were moving before any part finished (the old lines said "0 B of 20.0 MiB (0.0%)") ...
    assert before_any_part[0][0] > 0, before_any_part[0][1]
    # ... and kept moving: never fewer than the line before, more by the last line than by the first.
    done = [d for d, _, _ in lines]
    assert done == sorted(done) and done[-1] > done[0], [line for _, _, line in lines]
    assert all(re.search(r", [\d.]+ (B|KiB|MiB)/s", line) for _, _, line in lines)  # the cap's unit, not MB/s
    s3.delete_object(Bucket=BUCKET, Key=key)
