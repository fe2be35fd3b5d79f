"""When a MultipartUploadOperator may send: its upload window, bandwidth timetable and deadline, on Airflow's side.

The engine's schedule (``multipart.schedule``) pauses the upload when the window closes and judges the
deadline; this module is the operator's part: refuse a schedule that cannot work when the DAG is parsed
(templates: once rendered), resolve this run's window, timetable and deadline in the right timezone, wait
for an opening seconds away or reschedule the task for a later one before anything is created, and turn
``UploadPaused`` into XCom, metrics, a log line and a reschedule (README: "Upload windows").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from airflow_mpu_provider import version_compat
from airflow_mpu_provider.multipart import (
    BandwidthTimetable,
    UploadPaused,
    UploadWindow,
    deadline_at,
    finish_by_setting,
    resolve_timezone,
)
from airflow_mpu_provider.multipart.errors import InvalidUploadRequest
from airflow_mpu_provider.operators.arguments import is_template
from airflow_mpu_provider.operators.metrics import pause_metrics

#: Seconds to the window's opening that a task started outside it waits for instead of rescheduling: a
#: reschedule costs a task process and a scheduler round trip, and one due at once can race the scheduler's
#: handling of the run that asked for it.
WAIT_FOR_OPENING = 10


def utc_now() -> datetime:
    """The wall clock windows and deadlines are judged by (the operator's ``_window_now``; tests replace it)."""
    return datetime.now(UTC)


def timezone_of(task: Any, context: Any = None) -> Any:
    """``window_timezone``, else the DAG's timezone, else UTC."""
    if task.window_timezone is not None and not is_template(task.window_timezone):
        return resolve_timezone(task.window_timezone)
    dag = (context or {}).get("dag") or (task.dag if task.has_dag() else None)
    return resolve_timezone(getattr(dag, "timezone", None))


def check_schedule_arguments(task: Any) -> None:
    """Refuse a window or deadline that cannot work, when the DAG is parsed (templates: at execute)."""
    if task.command is not None and (task.upload_window is not None or task.finish_by is not None):
        raise InvalidUploadRequest(
            "upload_window and finish_by work for file=... uploads only: a command's output is a stream, which "
            "cannot pause and resume, and whose size is unknown. Write the output to a file first, or drop them."
        )
    if task.upload_window is not None and not version_compat.AIRFLOW_V_3_1_8_PLUS:
        raise InvalidUploadRequest(
            "upload_window needs Airflow >= 3.1.8: older schedulers run a task that rescheduled itself again at "
            "once instead of at its reschedule date (seen on 3.1.3), so the task would start over and over "
            "outside its window. Upgrade Airflow, or schedule the DAG inside the window without upload_window."
        )
    if task.upload_window is not None and not task.resume:
        raise InvalidUploadRequest(
            "upload_window needs resume=True: the next window continues the upload this one paused."
        )
    if task.window_timezone is not None and not is_template(task.window_timezone):
        resolve_timezone(task.window_timezone)
    if task.upload_window is not None and not is_template(task.upload_window):
        UploadWindow.parse(task.upload_window, timezone_of(task))
    if not is_template(task.finish_by):
        finish_by_setting(task.finish_by)


def raise_reschedule(when: datetime) -> NoReturn:
    from airflow.exceptions import AirflowRescheduleException

    raise AirflowRescheduleException(when)


@dataclass(frozen=True)
class UploadSchedule:
    """One run's schedule, from the task's rendered arguments: ``window`` (None: any time), ``bandwidth``
    (``max_bandwidth``, a timetable in the run's timezone), ``finish_by`` (an instant, or None), ``now``
    (the clock they are judged by)."""

    window: UploadWindow | None
    bandwidth: Any
    finish_by: datetime | None
    now: Callable[[], datetime]

    @classmethod
    def resolve(cls, task: Any, context: Any = None, *, now: Callable[[], datetime] = utc_now) -> UploadSchedule:
        """Checked again (templates are rendered by now), in ``timezone_of(task, context)``."""
        check_schedule_arguments(task)
        tz = timezone_of(task, context)
        window = UploadWindow.parse(task.upload_window, tz) if task.upload_window is not None else None
        bandwidth = task.max_bandwidth
        if isinstance(bandwidth, BandwidthTimetable):
            bandwidth = BandwidthTimetable(bandwidth.entries, tz)
        return cls(window, bandwidth, deadline_at(finish_by_setting(task.finish_by), tz, now()), now)

    def wait_for_window(self, log: Any, stop_if_killed: Callable[[], None]) -> None:
        """Started outside the upload window: wait for an opening at most ``WAIT_FOR_OPENING`` seconds away
        (``stop_if_killed`` raises if the task was killed meanwhile), else reschedule the task for the next
        opening, before anything is created."""
        if self.window is None:
            return
        now = self.now()
        if self.window.is_open(now):
            return
        opening = self.window.next_opening(now)
        wait = (opening - now).total_seconds()
        if wait <= WAIT_FOR_OPENING:
            log.info("Outside the upload window %s; it opens in %.1f s: waiting.", self.window.describe(), wait)
            until = time.monotonic() + wait
            while (left := until - time.monotonic()) > 0:
                stop_if_killed()
                time.sleep(min(0.5, left))
            return
        log.info(
            "Outside the upload window %s: nothing is sent now; rescheduled for its next opening, %s.",
            self.window.describe(),
            opening.isoformat(timespec="seconds"),
        )
        raise_reschedule(opening)


def reschedule_paused(task: Any, context: Any, paused: UploadPaused, *, has_store: bool) -> NoReturn:
    """The window closed mid-upload (kept and recorded, like a failed try's upload for its retry): say what is
    stored and left, the rate, when it resumes and the projected finish, in the log and XCom (``upload_paused``);
    count the pause; reschedule for the next opening. ``has_store``: whether task_state_store recorded it."""
    ti = context.get("ti")
    if ti is not None:
        ti.xcom_push(key="upload_paused", value=paused.to_dict())
    pause_metrics(task, paused)
    if not has_store:
        task.log.warning(
            "No task_state_store (Airflow < 3.3): the next run can find upload %s only with ListMultipartUploads, "
            "once it has been quiet for adopt_quiet_after (%s), and continues it only if it may adopt it and its "
            "parts verify; otherwise it starts afresh and this upload is left for S3AbortStaleUploadsOperator or "
            "a lifecycle rule.",
            paused.upload_id,
            task.adopt_quiet_after,
        )
    task.log.info(
        "Paused until the upload window opens again at %s: upload %s kept and recorded for the next run; the "
        "task is rescheduled (up_for_reschedule; try_number and retries untouched).",
        paused.resumes_at.isoformat(timespec="seconds"),
        paused.upload_id,
    )
    raise_reschedule(paused.resumes_at)
