"""Accounting of part bytes held in memory: the one number ``max_buffer_bytes`` promises to bound.

Parallel parts are what make an upload fast and what make it use memory: every part in flight is a
buffer of its full size, and a stream also holds the part it is reading. Counting those bytes where
they are taken and given back (rather than deriving a bound from a worker count) is what lets a
stream whose parts keep growing stay under the cap, and lets the result report the peak it reached.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class BufferBudget:
    """Part bytes held now, the most ever held, and whether another part fits under ``limit``.

    The limit is never allowed to stop an upload: a part larger than ``limit`` still fits when
    nothing else is held, so the honest bound is ``max(limit, largest part)``. Thread-safe.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._peak = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    @property
    def peak(self) -> int:
        """The most part bytes held at once so far (reported as ``peak_buffer_bytes``)."""
        return self._peak

    def fits(self, size: int) -> bool:
        """Whether a part of ``size`` bytes may be taken now without going over the limit."""
        with self._lock:
            return self._held == 0 or self._held + size <= self.limit

    def take(self, size: int) -> None:
        """Count ``size`` bytes as held; call before the buffer is allocated."""
        with self._lock:
            self._held += size
            self._peak = max(self._peak, self._held)

    def give_back(self, size: int) -> None:
        """Count ``size`` bytes as released; call once the last reference to the buffer is gone."""
        with self._lock:
            self._held -= size

    @contextmanager
    def holding(self, size: int) -> Iterator[None]:
        self.take(size)
        try:
            yield
        finally:
            self.give_back(size)
