"""Progress lines for the task log: bytes, percent, MB/s, ETA, at most one line per interval.

A 10,000-part upload must not write 10,000 log lines, and a stalled one must still be visible, so
lines are time-based rather than per part. Bytes found already uploaded (resume) count towards the
percentage but not towards the rate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from airflow_mpu_provider.multipart.plan import format_bytes

#: Seconds between progress lines when the caller does not choose.
DEFAULT_PROGRESS_INTERVAL = 30.0


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class ProgressReporter:
    """Thread-safe counter of sent bytes that logs a summary line at most every ``interval`` seconds."""

    def __init__(
        self,
        *,
        total_bytes: int | None,
        total_parts: int | None,
        log: logging.Logger,
        interval: float = DEFAULT_PROGRESS_INTERVAL,
        label: str = "",
        clock: Callable[[], float] = time.monotonic,
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
        self.done_bytes = 0
        self.done_parts = 0
        self.sent_bytes = 0

    def skip(self, nbytes: int, parts: int) -> None:
        """Count bytes that are already in S3 (resumed): they need no sending."""
        with self._lock:
            self.done_bytes += nbytes
            self.done_parts += parts

    def advance(self, nbytes: int) -> None:
        """Count one part sent; log a line if the interval has passed."""
        with self._lock:
            self.done_bytes += nbytes
            self.done_parts += 1
            self.sent_bytes += nbytes
            now = self._clock()
            if now - self._last_line < self.interval:
                return
            self._last_line = now
            line = self._line(now)
        self._log.info("%s", line)

    def rate(self, now: float | None = None) -> float:
        """Bytes per second actually sent in this run."""
        elapsed = (self._clock() if now is None else now) - self._started
        return self.sent_bytes / elapsed if elapsed > 0 else 0.0

    def _line(self, now: float) -> str:
        rate = self.rate(now)
        prefix = f"{self.label}: " if self.label else ""
        if self.total_bytes is None:  # a stream: no total, no percentage, no ETA
            return f"{prefix}{format_bytes(self.done_bytes)} so far, part {self.done_parts:,}, {rate / 1e6:.1f} MB/s"
        pct = 100.0 * self.done_bytes / self.total_bytes if self.total_bytes else 100.0
        remaining = self.total_bytes - self.done_bytes
        eta = format_duration(remaining / rate) if rate > 0 else "unknown"
        return (
            f"{prefix}{format_bytes(self.done_bytes)} of {format_bytes(self.total_bytes)} ({pct:.1f}%), "
            f"part {self.done_parts:,}/{self.total_parts or 0:,}, {rate / 1e6:.1f} MB/s, ETA {eta}"
        )

    def summary(self) -> str:
        now = self._clock()
        return self._line(now) + f", {format_duration(now - self._started)} elapsed"
