"""Progress lines for the task log: bytes, percent, MiB/s, ETA, one line per interval.

A 10,000-part upload must not write 10,000 log lines, and a stalled one must still be visible, so
lines are time-based rather than per part: while ``ticking()``, a timer thread writes a line every
``interval`` seconds even when nothing moves, and says for how long nothing has ("nothing sent for
2m00s"), so a stall shows in the task log while it lasts.

Bytes are counted as they go to the wire, not when a part finishes: every part's body reports what
the HTTP layer reads from it (``part_meter``), so 8 large parts sharing a bandwidth cap show bytes
moving long before the first of them finishes. Bytes that botocore sends again after rewinding a
body for a retry count towards the rate and are said ("resent"), not twice towards the percentage.
Bytes found already uploaded (resume) count towards the percentage but not towards the rate. Rates
are in MiB/s, the unit of ``max_bandwidth``'s log lines and of every size in the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from airflow_mpu_provider.multipart.units import format_bytes, format_duration, format_rate, plural

#: Seconds between progress lines when the caller does not choose.
DEFAULT_PROGRESS_INTERVAL = 30.0
#: The timer never writes more often than this (``interval=0`` means a line per part, not a busy loop).
MIN_TIMER_INTERVAL = 1.0


class Ticker:
    """What the progress timer sleeps on: ``wait`` returns early, with True, once ``stop`` is called.

    A class of its own so that tests can step the timer by hand instead of waiting for real time.
    """

    def __init__(self) -> None:
        self._stopped = threading.Event()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if stopped (now or before)."""
        return self._stopped.wait(seconds)

    def stop(self) -> None:
        self._stopped.set()


class ProgressReporter:
    """Thread-safe counter of sent bytes that logs a summary line every ``interval`` seconds.

    Lines come from ``advance`` (a part finished and a line is due) and, inside ``ticking()``, from a
    timer thread that writes the due line even when nothing finishes.
    """

    def __init__(
        self,
        *,
        total_bytes: int | None,
        total_parts: int | None,
        log: logging.Logger,
        interval: float = DEFAULT_PROGRESS_INTERVAL,
        label: str = "",
        clock: Callable[[], float] = time.monotonic,
        ticker_factory: Callable[[], Ticker] = Ticker,
    ) -> None:
        self.total_bytes = total_bytes
        self.total_parts = total_parts
        self.interval = interval
        self.label = label
        self._log = log
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._last_line = self._started
        self._last_moved = self._started  # when bytes last went out or a part last finished
        self._ticker_factory = ticker_factory
        #: Bytes in S3 or on their way there (each byte once, however often it was sent).
        self.done_bytes = 0
        self.done_parts = 0
        #: Bytes this run handed to the wire, resent ones included (what the rate is computed from).
        self.sent_bytes = 0
        #: Of those, bytes sent again after a retry rewound a part's body.
        self.resent_bytes = 0

    def skip(self, nbytes: int, parts: int) -> None:
        """Count bytes that are already in S3 (resumed): they need no sending."""
        with self._lock:
            self.done_bytes += nbytes
            self.done_parts += parts

    def part_meter(self) -> PartMeter:
        """What one part's body reports its reads to (see ``PartBody``); pass it to ``advance`` when done."""
        return PartMeter(self)

    def sent(self, new: int, resent: int) -> None:
        """Count bytes handed to the wire: ``new`` ones and ``resent`` ones (a retry of the request)."""
        with self._lock:
            self.done_bytes += new
            self.sent_bytes += new + resent
            self.resent_bytes += resent
            self._last_moved = self._clock()

    def advance(self, nbytes: int, meter: PartMeter | None = None) -> None:
        """Count one part of ``nbytes`` finished (the bytes its ``meter`` did not report yet, too); log a
        line if the interval has passed."""
        unreported = max(0, nbytes - (meter.new if meter is not None else 0))
        with self._lock:
            self.done_bytes += unreported
            self.done_parts += 1
            self.sent_bytes += unreported
            self._last_moved = self._clock()
        self.tick()

    def tick(self) -> float:
        """Log a line if one is due; return the seconds until the next one is."""
        with self._lock:
            now = self._clock()
            due = self._last_line + self.interval - now
            if due > 0:
                return due
            self._last_line = now
            line = self._line(now)
        self._log.info("%s", line)
        return self.interval

    @contextmanager
    def ticking(self) -> Iterator[ProgressReporter]:
        """Write the due line every ``interval`` seconds from a timer thread while the block runs.

        The thread is stopped and joined when the block ends, however it ends.
        """
        ticker = self._ticker_factory()
        thread = threading.Thread(target=self._tick_until_stopped, args=(ticker,), name="mpu-progress")
        thread.start()
        try:
            yield self
        finally:
            ticker.stop()
            thread.join()

    def _tick_until_stopped(self, ticker: Ticker) -> None:
        wait = self.interval
        while not ticker.wait(max(wait, MIN_TIMER_INTERVAL)):
            try:
                wait = self.tick()
            except Exception:  # a progress line must never take the upload down
                wait = self.interval

    def rate(self, now: float | None = None) -> float:
        """Bytes per second actually sent in this run."""
        elapsed = (self._clock() if now is None else now) - self._started
        return self.sent_bytes / elapsed if elapsed > 0 else 0.0

    def _line(self, now: float) -> str:
        rate = self.rate(now)
        prefix = f"{self.label}: " if self.label else ""
        # Bytes are counted as they go out: a quiet interval means nothing got through (a stall).
        quiet = now - self._last_moved
        notes = f", {format_bytes(self.resent_bytes)} resent" if self.resent_bytes else ""
        if quiet >= max(self.interval, MIN_TIMER_INTERVAL):
            if self.total_bytes is not None and self.done_bytes >= self.total_bytes:  # the socket buffers hold the rest
                notes += f", all sent, no answer from the store for {format_duration(quiet)}"
            else:
                notes += f", nothing sent for {format_duration(quiet)}"
        if self.total_bytes is None:  # a stream: no total, no percentage, no ETA
            return (
                f"{prefix}{format_bytes(self.done_bytes)} so far, {plural(self.done_parts, 'part')} done, "
                f"{format_rate(rate)}{notes}"
            )
        pct = 100.0 * self.done_bytes / self.total_bytes if self.total_bytes else 100.0
        remaining = self.total_bytes - self.done_bytes
        eta = format_duration(remaining / rate) if rate > 0 else "unknown"
        return (
            f"{prefix}{format_bytes(self.done_bytes)} of {format_bytes(self.total_bytes)} ({pct:.1f}%), "
            f"{self.done_parts:,}/{self.total_parts or 0:,} parts done, {format_rate(rate)}, ETA {eta}{notes}"
        )

    def summary(self) -> str:
        now = self._clock()
        return self._line(now) + f", {format_duration(now - self._started)} elapsed"


class PartMeter:
    """One part's share of a ``ProgressReporter``: what its body reported, so that the part's end
    adds only what the body did not (a body read by something that is not the socket, e.g. a test stub)."""

    __slots__ = ("_progress", "new")

    def __init__(self, progress: ProgressReporter) -> None:
        self._progress = progress
        self.new = 0

    def sent(self, new: int, resent: int) -> None:
        self.new += new
        self._progress.sent(new, resent)
