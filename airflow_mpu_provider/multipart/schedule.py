"""One file upload's schedule while it runs: its window, its bandwidth timetable and its deadline. No Airflow.

The engine asks ``window_open()`` before it starts each part: once the window has closed, no new part
starts (the parts in flight finish, so nothing sent is wasted) and the engine raises ``UploadPaused``,
keeping the upload, with what is stored, what is left, the rate, when the window opens again and the
projected finish. A bandwidth timetable is a ``BandwidthLimit`` whose rate follows the timetable: the
part bodies' socket writes ask it for bandwidth every 1/32 s of the cap, and the first ask after a
change in the timetable switches the rate (``BandwidthLimit.set_rate``), so the switch is smooth and
needs no timer. A deadline (``finish_by``) is judged as parts finish: when the projection at the rate
measured so far (never above the timetable's cap, only while the window is open) passes it, one warning
says so, early; another only if it turns from "can" back to "cannot".

``now`` (a callable returning an aware datetime) is the schedule's only clock: tests set it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from airflow_mpu_provider.multipart.bandwidth import BandwidthLimit
from airflow_mpu_provider.multipart.errors import MultipartUploadError
from airflow_mpu_provider.multipart.units import format_bytes
from airflow_mpu_provider.multipart.windows import (
    BandwidthTimetable,
    UploadWindow,
    deadline_at,
    describe_rate,
    project_finish,
)

#: The rate a timetable's uncapped periods run at: far above any link, so the bucket never waits.
UNCAPPED = 1 << 40


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


class UploadPaused(MultipartUploadError):
    """The upload window closed (or was closed at the start): no part is sending, the upload is kept (not
    aborted), and a later run continues it (``resume_upload_id=upload_id``) at ``resumes_at``.

    ``stored_bytes``/``stored_parts`` are None when the run paused before it looked at the upload."""

    def __init__(
        self,
        message: str,
        *,
        bucket: str,
        key: str,
        upload_id: str,
        size: int,
        parts: int,
        stored_bytes: int | None,
        stored_parts: int | None,
        sent_bytes: int,
        rate: float | None,
        resumes_at: datetime,
        projected_finish: datetime | None,
        window: str,
    ) -> None:
        super().__init__(message)
        self.bucket = bucket
        self.key = key
        self.upload_id = upload_id
        self.size = size
        self.parts = parts
        self.stored_bytes = stored_bytes
        self.stored_parts = stored_parts
        self.sent_bytes = sent_bytes
        self.rate = rate
        self.resumes_at = resumes_at
        self.projected_finish = projected_finish
        self.window = window

    @property
    def left_bytes(self) -> int | None:
        return None if self.stored_bytes is None else self.size - self.stored_bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (datetimes as ISO 8601): what the operator pushes to XCom."""
        return {
            "bucket": self.bucket,
            "key": self.key,
            "upload_id": self.upload_id,
            "size": self.size,
            "parts": self.parts,
            "stored_bytes": self.stored_bytes,
            "stored_parts": self.stored_parts,
            "left_bytes": self.left_bytes,
            "sent_bytes": self.sent_bytes,
            "rate": round(self.rate) if self.rate else None,
            "resumes_at": _iso(self.resumes_at),
            "projected_finish": _iso(self.projected_finish),
            "window": self.window,
        }


class TimetableBandwidth(BandwidthLimit):
    """A ``BandwidthLimit`` whose rate follows a ``BandwidthTimetable``: checked at every ``take`` (every
    socket write of a part), switched by ``set_rate`` at the first one after a change."""

    def __init__(
        self, timetable: BandwidthTimetable, now: Callable[[], datetime], log: logging.Logger, **limit: Any
    ) -> None:
        """``limit``: ``BandwidthLimit``'s ``clock`` and ``wait`` (tests drive them)."""
        at = now()
        self.timetable = timetable
        #: The timetable's cap in force (None: an uncapped period).
        self.current = timetable.rate_at(at)
        super().__init__(self.current or UNCAPPED, **limit)
        self._now = now
        self._log = log
        self._next_change = timetable.next_change(at)
        self._switching = threading.Lock()

    def take(self, size: int, cancel: threading.Event | None = None) -> None:
        self.follow_timetable()
        super().take(size, cancel)

    def follow_timetable(self) -> None:
        """Switch to the timetable's rate if a change is due (cheap when none is)."""
        due = self._next_change
        if due is None:
            return
        at = self._now()
        if at < due:
            return
        with self._switching:
            if self._next_change is None or at < self._next_change:
                return  # another thread switched meanwhile
            rate = self.timetable.rate_at(at)
            self.set_rate(rate or UNCAPPED)
            self.current = rate
            self._next_change = self.timetable.next_change(at)
        self._log.info(
            "Bandwidth timetable: %s from now on (max_bandwidth %s).", describe_rate(rate), self.timetable.describe()
        )

    def __repr__(self) -> str:
        return f"TimetableBandwidth({self.timetable.describe()}, now {describe_rate(self.current)})"


class UploadSchedule:
    """The window, the bandwidth timetable and the deadline of one upload run (any of them may be None)."""

    def __init__(
        self,
        *,
        window: UploadWindow | None = None,
        timetable: BandwidthTimetable | None = None,
        finish_by: datetime | None = None,
        log: logging.Logger | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.window = window
        self.timetable = timetable
        self.finish_by = finish_by
        self.log = log or logging.getLogger(__name__)
        #: The clock every decision reads (an aware datetime); tests replace it.
        self.now: Callable[[], datetime] = now or _utc_now
        self.bandwidth = TimetableBandwidth(timetable, lambda: self.now(), self.log) if timetable else None
        #: Set once the window was found closed: from then on no part starts in this run.
        self.paused = False
        #: Whether the upload can finish by ``finish_by`` (None: not judged yet); ``on_deadline`` hears changes.
        self.on_time: bool | None = None
        self.on_deadline: Callable[[bool, datetime | None], None] | None = None
        self._lock = threading.Lock()
        self._began: float | None = None
        self._sent = 0
        self._sent_parts = 0
        self._left = 0
        self._judge_after = 1

    @classmethod
    def for_options(cls, options: Any, log: logging.Logger | None = None) -> UploadSchedule | None:
        """The schedule ``UploadOptions`` ask for (``upload_window``, ``finish_by``, a ``max_bandwidth``
        timetable), or None. Strings and dicts are parsed in UTC: pass ``UploadWindow``/``BandwidthTimetable``
        objects for another timezone."""
        window = options.upload_window
        bandwidth = options.max_bandwidth
        timetable = BandwidthTimetable.parse(bandwidth) if isinstance(bandwidth, dict | BandwidthTimetable) else None
        if window is None and timetable is None and options.finish_by is None:
            return None
        window = UploadWindow.parse(window) if window is not None else None
        tz = window.tz if window is not None else (timetable.tz if timetable is not None else UTC)
        schedule = cls(window=window, timetable=timetable, log=log)
        schedule.finish_by = deadline_at(options.finish_by, tz, schedule.now())
        return schedule

    # -- the window ----------------------------------------------------------------------------------

    def window_open(self) -> bool:
        """Whether a part may start now; once it may not, it never may again in this run (parts in flight
        finish, and the run ends paused)."""
        if self.paused:
            return False
        if self.window is None:
            return True
        at = self.now()
        if self.window.is_open(at):
            return True
        with self._lock:
            if self.paused:
                return False
            self.paused = True
        self.log.info(
            "Upload window %s is closed (%s): no new part is started; parts in flight finish.",
            self.window.describe(),
            at.isoformat(timespec="seconds"),
        )
        return False

    def next_opening(self) -> datetime:
        assert self.window is not None
        return self.window.next_opening(self.now())

    # -- progress, rate, deadline ------------------------------------------------------------------------

    def begin(self, left: int, workers: int) -> None:
        """Sending starts, ``left`` bytes to go with ``workers`` parts in flight: the deadline is judged on
        the cap now, on the measured rate once ``workers`` parts have finished (the pipeline is full then)."""
        with self._lock:
            self._began = time.monotonic()
            self._left = left
            self._judge_after = max(1, workers)
        self.check_deadline()

    def part_sent(self, size: int) -> None:
        with self._lock:
            self._sent += size
            self._sent_parts += 1
            self._left = max(0, self._left - size)
        self.check_deadline()

    @property
    def sent_bytes(self) -> int:
        return self._sent

    def rate(self) -> float | None:
        """Bytes per second this run has sent (None: no part finished yet)."""
        if self._began is None or not self._sent_parts:
            return None
        elapsed = time.monotonic() - self._began
        return self._sent / elapsed if elapsed > 0 else None

    def projected_finish(self, left: int | None = None) -> datetime | None:
        measured = self.rate() if self._sent_parts >= self._judge_after or self.paused else None
        return project_finish(
            self._left if left is None else left,
            self.now(),
            link_rate=measured,
            window=self.window,
            timetable=self.timetable,
        )

    def check_deadline(self) -> None:
        """Warn when the upload cannot finish by ``finish_by`` (once; again only after it could again)."""
        if self.finish_by is None:
            return
        projected = self.projected_finish()
        if projected is None:
            return
        on_time = projected <= self.finish_by
        with self._lock:
            if on_time == self.on_time:
                return
            was, self.on_time = self.on_time, on_time
        rate = self.rate()
        if not on_time:
            self.log.warning(
                "Deadline: at the current rate (%s) this upload cannot finish by finish_by %s: %s left, projected "
                "to finish at %s%s.",
                describe_rate(rate)
                if rate
                else f"the cap, {describe_rate(self.bandwidth.current if self.bandwidth else None)}",
                self.finish_by.isoformat(timespec="minutes"),
                format_bytes(self._left),
                projected.isoformat(timespec="minutes"),
                f" (window {self.window.describe()})" if self.window else "",
            )
        elif was is False:
            self.log.info(
                "Deadline: back on track for finish_by %s; projected to finish at %s.",
                self.finish_by.isoformat(timespec="minutes"),
                projected.isoformat(timespec="minutes"),
            )
        if self.on_deadline is not None:
            self.on_deadline(on_time, projected)

    def _cap(self) -> int | None:
        return self.bandwidth.current if self.bandwidth is not None else None

    # -- the outcome -------------------------------------------------------------------------------

    def paused_outcome(
        self,
        *,
        bucket: str,
        key: str,
        upload_id: str,
        size: int,
        parts: int,
        stored_bytes: int | None,
        stored_parts: int | None,
    ) -> UploadPaused:
        """The ``UploadPaused`` to raise, its message the line for the log."""
        assert self.window is not None
        resumes_at = self.next_opening()
        left = size - stored_bytes if stored_bytes is not None else None
        projected = self.projected_finish(left) if left is not None else None
        rate = self.rate()
        if stored_bytes is None:
            message = (
                f"Outside the upload window {self.window.describe()}: nothing sent; "
                f"resumes at {resumes_at.isoformat(timespec='seconds')}."
            )
        else:
            measured = describe_rate(rate) if rate else "no measured rate"
            finish = projected.isoformat(timespec="seconds") if projected else "unknown (no rate measured yet)"
            message = (
                f"Upload window {self.window.describe()} closed: upload {upload_id} of s3://{bucket}/{key} kept, "
                f"{format_bytes(stored_bytes)} stored ({stored_parts} of {parts} parts), "
                f"{format_bytes(left)} left; sent {format_bytes(self._sent)} in this run at {measured}; "
                f"resumes at {resumes_at.isoformat(timespec='seconds')}; projected finish {finish}."
            )
        return UploadPaused(
            message,
            bucket=bucket,
            key=key,
            upload_id=upload_id,
            size=size,
            parts=parts,
            stored_bytes=stored_bytes,
            stored_parts=stored_parts,
            sent_bytes=self._sent,
            rate=rate,
            resumes_at=resumes_at,
            projected_finish=projected,
            window=self.window.describe(),
        )
