"""Upload windows through Airflow: ``airflow dags test --use-executor`` drives the reschedules as a scheduler
would (its loop re-queues an up_for_reschedule task once its reschedule date has passed, without touching
try_number), and each run is a new task process under the supervisor, as in production.

Windows of seconds (HH:MM:SS, UTC) stand in for nights: a file that needs three of them ends byte-identical,
the task went up_for_reschedule at least twice and never failed, each part was sent once (server-side
counts), no task process was alive between windows, and nothing is left incomplete.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import psutil
import pytest

from airflow_mpu_provider.version_compat import AIRFLOW_V_3_1_8_PLUS, AIRFLOW_V_3_3_PLUS
from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.e2e.conftest import BUCKET, task_process

#: Seconds a window is open and closed: long enough for a few 5 MiB parts at 1 MiB/s after a task process
#: starts on a busy machine, short enough for the test to take about two minutes.
OPEN, CLOSED = 14, 12


def windows(first: datetime, count: int) -> str:
    def hms(at: datetime) -> str:
        return at.strftime("%H:%M:%S")

    ranges = []
    for n in range(count):
        opens = first + timedelta(seconds=n * (OPEN + CLOSED))
        ranges.append(f"{hms(opens)}-{hms(opens + timedelta(seconds=OPEN))}")
    return ", ".join(ranges)


def _story(log: str) -> list[str]:
    """The task log's lines about windows, resumes and reschedules (printed with -s: the README quotes them)."""
    lines = []
    for line in log.splitlines():
        match = re.search(r'"timestamp":"([^"]+)","level":"(\w+)","event":"([^"]+)"', line)
        if match and re.search(r"window|Resuming|Sending|Rescheduling|Completed|Uploaded|Found upload", match[3]):
            lines.append(f"[{match[1][:19]}] {match[2].upper()} - {match[3]}")
    return lines


class Watch:
    """Polled while the DAG runs: whether a task process existed between two pauses (it must not)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, bool]] = []

    def __call__(self, dags_test: psutil.Process) -> None:
        self.samples.append((time.time(), task_process(dags_test) is not None))


@pytest.mark.skipif(not AIRFLOW_V_3_1_8_PLUS, reason="upload_window needs Airflow >= 3.1.8 (refused before)")
def test_a_file_that_needs_three_windows_reschedules_between_them_and_resumes(run_dag, proxy, s3, tmp_path):
    parts = 8
    path = make_file(tmp_path / "nightly.dump", parts * 5 * MiB)
    key = "e2e/windowed.bin"
    start = datetime.now(UTC).replace(microsecond=0)
    if start.hour == 23 and start.minute >= 55:  # the windows must not cross midnight (HH:MM:SS ranges)
        time.sleep((60 - start.minute) * 60 - start.second + 1)
        start = datetime.now(UTC).replace(microsecond=0)
    # The first window opens after the task has started (dags test takes ~15 s to get there; the first run
    # reschedules without creating anything); eight windows leave room for a busy machine, three are needed.
    spec = windows(start + timedelta(seconds=40), 8)
    watch = Watch()
    result = run_dag(
        use_executor=True,
        during=watch,
        file=path,
        key=f"s3://{BUCKET}/{key}",
        part_size=5 * MiB,
        concurrency=1,
        max_bandwidth=MiB,
        upload_window=spec,
        retries=0,
        timeout=480,
        # Airflow < 3.3 (no task_state_store): the next run finds the paused upload by listing, and adopts it
        # once it has been quiet this long (seconds here, against the windows' gaps of 12 s).
        **({} if AIRFLOW_V_3_3_PLUS else {"adopt_quiet_after": 2}),
    )
    log = result.text
    print("\n" + "\n".join(_story(log)))
    assert result.task_succeeded, log[-6000:]
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert incomplete_uploads(s3, BUCKET, key) == []
    # Started before the first opening: rescheduled, nothing created then.
    assert result.shows("Outside the upload window")
    # Paused at least twice mid-upload (three windows at least), and never failed.
    pauses = log.count("Paused until the upload window opens again")
    assert pauses >= 2, log[-6000:]
    assert log.count("marking task as UP_FOR_RESCHEDULE") >= pauses + 1
    assert "final_state=failed" not in log and "up_for_retry" not in log
    # Server side: one upload, every part sent exactly once; each run resumed it and sent only what was missing.
    assert proxy.count("CreateMultipartUpload") == 1
    sent = sorted(r.part_number for r in proxy.requests() if r.kind == "UploadPart" and r.status == 200)
    assert sent == list(range(1, parts + 1))
    # Each later run found the paused upload: its record (Airflow >= 3.3), or by listing (the fallback).
    found = "to resume in task_state_store" if AIRFLOW_V_3_3_PLUS else "with ListMultipartUploads"
    assert log.count(found) >= pauses
    # No task process between windows: after each pause the process was gone before the next run started.
    assert any(not alive for _, alive in watch.samples), "a task process was alive throughout"
    assert all(p.name.startswith("attempt=1") for p in result.logs_folder.rglob("*.log")), "try_number changed"
