"""operators/upload_schedule.py: a run's window, timetable and deadline resolved in the right timezone, the wait
for an opening seconds away or the reschedule for a later one, and a pause turned into XCom, metrics and a
reschedule (tests/operators/test_windows.py runs them through the operator's execute)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from airflow.exceptions import AirflowRescheduleException

from airflow_mpu_provider.multipart import BandwidthTimetable, UploadPaused
from airflow_mpu_provider.multipart.errors import UploadCancelledError
from airflow_mpu_provider.multipart.units import MiB
from airflow_mpu_provider.operators.upload_schedule import UploadSchedule, reschedule_paused, timezone_of
from tests.operators.test_metrics import RecordingStats
from tests.operators.test_windows import MORNING, NEXT_OPENING, NIGHT, needs_3_1_8, op


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, msg: str, *args) -> None:
        self.lines.append(("info", msg % args))

    def warning(self, msg: str, *args) -> None:
        self.lines.append(("warning", msg % args))


@needs_3_1_8
def test_timezone_defaults_to_the_dags():
    import pendulum
    from airflow.sdk import DAG

    with DAG("tz", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Berlin")):
        operator = op(upload_window="22:00-06:00", max_bandwidth={"08:00": MiB, "23:00": None}, finish_by="06:00")
    schedule = UploadSchedule.resolve(operator, now=lambda: NIGHT)
    assert schedule.window.describe() == "22:00-06:00 (Europe/Berlin)"
    assert isinstance(schedule.bandwidth, BandwidthTimetable)
    assert schedule.bandwidth.describe() == "08:00 1.0 MiB/s, 23:00 uncapped (Europe/Berlin)"
    assert schedule.finish_by == datetime(2026, 12, 8, 5, 0, tzinfo=UTC)  # 06:00 in Berlin, the next one
    assert timezone_of(op(upload_window="22:00-06:00")) is UTC  # no DAG, no window_timezone: UTC
    assert timezone_of(op(window_timezone="Asia/Tokyo")).key == "Asia/Tokyo"


def test_no_window_is_any_time():
    schedule = UploadSchedule.resolve(op(max_bandwidth=MiB), now=lambda: MORNING)
    assert (schedule.window, schedule.bandwidth, schedule.finish_by) == (None, MiB, None)
    schedule.wait_for_window(Log(), lambda: pytest.fail("nothing to wait for"))  # returns at once


@needs_3_1_8
def test_outside_the_window_a_later_opening_is_a_reschedule():
    log = Log()
    schedule = UploadSchedule.resolve(op(upload_window="22:00-06:00"), now=lambda: MORNING)
    with pytest.raises(AirflowRescheduleException) as rescheduled:
        schedule.wait_for_window(log, lambda: None)
    assert rescheduled.value.reschedule_date == NEXT_OPENING
    assert log.lines == [
        (
            "info",
            "Outside the upload window 22:00-06:00 (UTC): nothing is sent now; rescheduled for its next opening, "
            "2026-12-08T22:00:00+00:00.",
        )
    ]


@needs_3_1_8
def test_waiting_for_an_opening_stops_when_the_task_is_killed():
    schedule = UploadSchedule.resolve(op(upload_window="22:00-06:00"), now=lambda: NEXT_OPENING - timedelta(seconds=5))

    def killed() -> None:
        raise UploadCancelledError("the task was killed before the upload started")

    with pytest.raises(UploadCancelledError):
        schedule.wait_for_window(Log(), killed)


def paused() -> UploadPaused:
    return UploadPaused(
        "closed", bucket="b", key="k", upload_id="u-1", size=30 * MiB, parts=6, stored_bytes=10 * MiB,
        stored_parts=2, sent_bytes=10 * MiB, rate=MiB, resumes_at=NEXT_OPENING, projected_finish=None,
        window="22:00-06:00 (UTC)",
    )  # fmt: skip


@pytest.mark.parametrize("has_store", [True, False])
def test_a_pause_pushes_counts_logs_and_reschedules(monkeypatch, has_store):
    import airflow.providers.common.compat.sdk as compat

    stats = RecordingStats()
    monkeypatch.setattr(compat, "Stats", stats, raising=False)
    operator, log, pushed = op(), Log(), {}
    monkeypatch.setattr(type(operator), "log", log)
    ti = SimpleNamespace(xcom_push=lambda key, value: pushed.__setitem__(key, value))
    with pytest.raises(AirflowRescheduleException) as rescheduled:
        reschedule_paused(operator, {"ti": ti}, paused(), has_store=has_store)
    assert rescheduled.value.reschedule_date == NEXT_OPENING
    assert pushed == {"upload_paused": paused().to_dict()}
    assert [(c[1], c[2]) for c in stats.calls] == [("mpu.pauses", 1), ("mpu.bytes_sent", 10 * MiB)]
    warned = [line for level, line in log.lines if level == "warning"]
    assert bool(warned) is not has_store  # only without task_state_store: how the next run finds it
    assert log.lines[-1][1].startswith("Paused until the upload window opens again at 2026-12-08T22:00:00+00:00")
