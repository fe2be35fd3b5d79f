"""Stopping what runs, from any thread: ``CancelScope`` (set once, final; stoppers called at once).

The hook holds one and ``S3MultipartHook.cancel`` cancels it; the upload sequences check it between
their steps and register what stops the step that is running (an engine's ``cancel``, a command's kill).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from airflow_mpu_provider.multipart.errors import UploadCancelledError


class CancelScope:
    """A cancel that is final: later work is refused too (a cancel landing between two steps must stop
    the next one). ``cancel`` does no network I/O (it may run in a signal handler)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._stoppers: list[Callable[[], None]] = []
        #: Reentrant: ``cancel`` may run in a signal handler on a thread that is registering a stopper.
        self._lock = threading.RLock()

    def cancel(self) -> bool:
        """Cancel; whether something was running (a stopper registered) and was told to stop."""
        self.event.set()
        with self._lock:
            stoppers = list(self._stoppers)
        for stop in stoppers:
            stop()
        return bool(stoppers)

    @property
    def cancelled(self) -> bool:
        return self.event.is_set()

    def raise_if_cancelled(self, message: str = "the upload was cancelled before it started") -> None:
        if self.event.is_set():
            raise UploadCancelledError(message)

    @contextlib.contextmanager
    def cancelling(self, stop: Callable[[], None]) -> Iterator[None]:
        """Make ``cancel`` call ``stop`` while the block runs (at once if it was already cancelled)."""
        with self._lock:
            self._stoppers.append(stop)
        try:
            if self.event.is_set():
                stop()
            yield
        finally:
            with self._lock:
                self._stoppers.remove(stop)
