"""Upload windows through Airflow: ``airflow dags test --use-executor`` drives the reschedules as a scheduler
would (its loop re-queues an up_for_reschedule task once its reschedule date has passed, without touching
try_number), and each run is a new task process under the supervisor, as in production.

Windows of seconds (HH:MM:SS, UTC) stand in for nights: a file that needs three of them ends byte-identical,
the task went up_for_reschedule at least twice and never failed, each part was sent once (server-side
counts), no task process was alive between windows, and nothing is left incomplete. A kill inside a window
is not a pause: after a SIGKILL Airflow's retry resumes the upload; a SIGTERM aborts it and fails the task.
"""

from __future__ import annotations

import re
import signal
import time
from datetime import UTC, datetime, timedelta

import psutil
import pytest

from airflow_mpu_provider.version_compat import AIRFLOW_V_3_1_8_PLUS, AIRFLOW_V_3_3_PLUS
from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.e2e.conftest import BUCKET, task_process
from tests.e2e.test_dag_runs import SignalTaskAfterParts, object_is, stored_parts, what_happened
from tests.support.s3_proxy import Fault

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


def open_window(start: datetime) -> str:
    """A window open from a minute before ``start`` for 20 minutes (past midnight it wraps): the kill tests'
    tries all run inside it, so what they show is the window path's kill handling, not a pause."""
    return f"{(start - timedelta(minutes=1)):%H:%M:%S}-{(start + timedelta(minutes=20)):%H:%M:%S}"


@pytest.mark.skipif(not AIRFLOW_V_3_1_8_PLUS, reason="upload_window needs Airflow >= 3.1.8 (refused before)")
def test_sigkill_during_a_window_then_the_retry_resumes_the_upload(run_dag, proxy, s3, tmp_path):
    """Nothing runs in a SIGKILLed task: Airflow retries it (within the window) and the retry resumes the
    recorded upload, sending only the parts S3 did not hold when the task died, into the same upload."""
    total_parts = 6
    path = make_file(tmp_path / "nightly.dump", total_parts * 5 * MiB)
    key = "e2e/windowed-sigkill.bin"
    proxy.add_fault(Fault(kind="UploadPart", action="throttle", rate=2 * MiB))  # 2.5 s a part: one mid-body
    at_kill: dict[str, int] = {}

    def measure_then_count_afresh() -> None:  # once the killed task process is gone
        at_kill.update(stored=stored_parts(s3, key), created=proxy.count("CreateMultipartUpload"))
        proxy.reset_counts()
        proxy.clear_faults()

    kill = SignalTaskAfterParts(proxy, 2, signal.SIGKILL, then=measure_then_count_afresh)
    settings = dict(
        file=path,
        key=f"s3://{BUCKET}/{key}",
        part_size=5 * MiB,
        concurrency=1,
        upload_window=open_window(datetime.now(UTC)),
        retries=1,
        retry_delay=1,
        adopt_quiet_after=1,  # Airflow < 3.3 (and a new run): the upload is found by listing once quiet 1 s
    )
    result = run_dag(use_executor=True, during=kill, timeout=300, **settings)
    assert kill.sent, "the task finished before it could be killed"
    assert result.shows("exit_code=<Negsignal.SIGKILL: -9> final_state=up_for_retry")
    assert at_kill["created"] == 1
    retried_by_airflow = result.task_succeeded or object_is(s3, key, path)
    print(f"\nSIGKILLed with {at_kill['stored']} of {total_parts} parts stored; resumed by", end=" ")
    print("Airflow's retry" if retried_by_airflow else "a new run (dags test marked the killed try FAILED)")
    if not retried_by_airflow:
        # dags test's executor race (see test_dag_runs.py) marked the task FAILED: no retry ran. The next
        # run (as after a window's reschedule) finds the upload by listing and must resume it the same way.
        assert result.shows("Marking task as FAILED"), result.log[-5000:]
        at_kill["stored"] = stored_parts(s3, key)  # the executor may have run the retry for a while
        proxy.reset_counts()
        result = run_dag(use_executor=True, timeout=300, **{**settings, "retries": 0})
        assert result.task_succeeded, result.log[-5000:]
    done = at_kill["stored"]
    assert 2 <= done < total_parts
    assert proxy.count("UploadPart", status=200) == total_parts - done, what_happened(proxy, result)
    assert proxy.count("CreateMultipartUpload") == 0, what_happened(proxy, result)  # one upload in all
    found_in_store = AIRFLOW_V_3_3_PLUS and retried_by_airflow
    assert result.shows("to resume in task_state_store" if found_in_store else "with ListMultipartUploads")
    assert result.shows(f"{done} of {total_parts} parts")
    assert "Outside the upload window" not in result.text and "Paused until" not in result.text
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert incomplete_uploads(s3, BUCKET, key) == []


@pytest.mark.skipif(not AIRFLOW_V_3_1_8_PLUS, reason="upload_window needs Airflow >= 3.1.8 (refused before)")
def test_sigterm_during_a_window_aborts_the_upload_and_fails_the_task(run_dag, proxy, s3, tmp_path):
    """SIGTERM is Airflow's "stop this task" (mark failed, kill): on_kill aborts the upload, as without a
    window; it is not a pause, and the task does not reschedule."""
    path = make_file(tmp_path / "nightly.dump", 6 * 5 * MiB)
    key = "e2e/windowed-sigterm.bin"
    proxy.add_fault(Fault(kind="UploadPart", action="throttle", rate=2 * MiB))  # a part always in flight
    terminate = SignalTaskAfterParts(proxy, 2, signal.SIGTERM)
    result = run_dag(
        use_executor=True,
        during=terminate,
        timeout=300,
        file=path,
        key=f"s3://{BUCKET}/{key}",
        part_size=5 * MiB,
        concurrency=1,
        upload_window=open_window(datetime.now(UTC)),
        retries=0,
    )
    assert terminate.sent, "the task finished before it could be terminated"
    assert not result.succeeded
    assert result.shows("final_state=failed"), result.log[-5000:]
    assert result.shows("Task killed: aborting the multipart upload")
    assert proxy.count("AbortMultipartUpload") >= 1
    assert "UP_FOR_RESCHEDULE" not in result.text and "Paused until" not in result.text
    assert incomplete_uploads(s3, BUCKET, key) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=key)
