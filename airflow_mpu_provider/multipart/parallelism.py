"""How many parts to keep in flight: found while the upload runs, not fixed in advance.

On a lossy or long link each TCP connection is held to about MSS/RTT x 1.22/√loss, so an upload's
throughput follows the number of parts in flight; on loopback or a short link a few are enough and
more only cost CPU. ``AdaptiveParallelism`` measures the aggregate rate over epochs of a few seconds (and
at least half a round of parts) and applies AIMD:

* **additive increase** while the rate keeps rising: ``step`` more parts after every epoch whose rate
  rose with the parts added, each added part bringing at least ``efficiency`` (half) of what a part
  brought at the best count so far; when an increase brings less, the link (or the store, or the CPU) is
  full, and the controller goes back to the smaller count that gave that rate and holds it (*settled*).
* **multiplicative decrease** on throttling (a SlowDown / 503 answer to a part): the count halves at
  once (at most once per epoch), and the count that was throttled becomes a ceiling never reached again;
  growth resumes one part per gaining epoch below it. Halving is what makes many clients sharing a
  throttled prefix converge to a fair share (the TCP argument); a ceiling keeps one client from probing
  the store's limit over and over, each probe costing retried parts.
* a gentler decrease (x 0.75) on rising part latency with no gain in rate once settled: the parts
  queue somewhere (a shared link, a busy store), and fewer of them send as fast.

Everything here is arithmetic on what it is told plus an injected clock: tests feed it synthetic rates.
``PermitGate`` applies the count to the engine's workers at runtime.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Parts in flight an adaptive upload starts with (the fixed default before it adapted).
ADAPTIVE_START = 8
#: Default upper bound on parts in flight (``max_concurrency``).
DEFAULT_MAX_CONCURRENCY = 64


class AdaptiveParallelism:
    """AIMD on the number of parts in flight; thread-safe. ``limit`` is the count to keep in flight now.

    Feed it ``sent(total_bytes)`` (the upload's bytes so far, monotonic: the file engine gives the bytes of
    the parts S3 has acknowledged) whenever convenient, ``part_done(seconds)`` as parts finish, and
    ``throttled(in_flight)`` on SlowDown/503.
    """

    def __init__(
        self,
        *,
        start: int = ADAPTIVE_START,
        ceiling: int = DEFAULT_MAX_CONCURRENCY,
        floor: int = 1,
        step: int = 4,
        epoch: float = 3.0,
        efficiency: float = 0.5,
        noise: float = 0.10,
        decrease: float = 0.5,
        latency_decrease: float = 0.75,
        latency_rise: float = 1.5,
        parts_per_epoch: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= floor <= ceiling:
            raise ValueError(f"need 1 <= floor <= ceiling, got floor={floor}, ceiling={ceiling}")
        self.floor = floor
        self.ceiling = ceiling
        self.step = max(1, step)
        self.epoch = epoch
        self.efficiency = efficiency
        self.noise = noise
        self.decrease = decrease
        self.latency_decrease = latency_decrease
        self.latency_rise = latency_rise
        #: An epoch also lasts until this fraction of ``limit`` parts finished in it (a rate over whole parts).
        self.parts_per_epoch = parts_per_epoch
        self._clock = clock
        self._lock = threading.Lock()
        self.limit = min(max(start, floor), ceiling)
        self.growing = True
        #: Times a part was throttled, and decreases made for it or for latency (for the log).
        self.throttles = 0
        self.decreases = 0
        self._best_rate = 0.0  # the best epoch rate so far, and the count that reached it
        self._best_limit = self.limit
        self._settled_latency: float | None = None
        self._epoch_started = clock()
        self._epoch_bytes_at_start = 0  # bytes sent when the epoch started (none yet: the controller starts first)
        self._last_total = 0
        self._latencies: list[float] = []
        self._decreased_this_epoch = False

    # -- what it is told -----------------------------------------------------------------------

    def sent(self, total_bytes: int) -> int:
        """The upload has handed ``total_bytes`` to sockets so far; returns the limit (maybe changed)."""
        with self._lock:
            self._last_total = total_bytes
            elapsed = self._clock() - self._epoch_started
            if elapsed >= self.epoch and len(self._latencies) >= max(1, int(self.limit * self.parts_per_epoch)):
                rate = (total_bytes - self._epoch_bytes_at_start) / elapsed
                self._end_epoch(rate)
            return self.limit

    def part_done(self, seconds: float) -> None:
        """A part took ``seconds`` from its first byte handed out to S3's answer."""
        with self._lock:
            self._latencies.append(seconds)

    def throttled(self, in_flight: int | None = None) -> int:
        """A part was answered SlowDown/503 while ``in_flight`` parts were in flight: halve (once an epoch)
        and never again reach the count that was throttled. Returns the new limit."""
        with self._lock:
            self.throttles += 1
            level = self.limit if in_flight is None else in_flight
            self.ceiling = max(self.floor, min(self.ceiling, level - 1))
            if not self._decreased_this_epoch:
                self.limit = max(self.floor, int(self.limit * self.decrease))
                self.decreases += 1
                self._decreased_this_epoch = True
                self.growing = True  # additive increase resumes below the ceiling, a part at a time
                self.step = 1
                self._best_rate = 0.0
                self._restart_epoch()
                self._decreased_this_epoch = True
            self.limit = min(self.limit, self.ceiling)
            return self.limit

    # -- the decisions -------------------------------------------------------------------------

    def _end_epoch(self, rate: float) -> None:
        latency = _median(self._latencies)
        if self.growing:
            added = (self.limit - self._best_limit) / self._best_limit
            if self._best_rate == 0 or rate >= self._best_rate * (1 + self.efficiency * added):
                self._best_rate, self._best_limit = rate, self.limit
                if self.limit >= self.ceiling:
                    self._settle(latency)
                else:
                    self.limit = min(self.ceiling, self.limit + self.step)
            else:  # flattened: the fewer parts gave the same rate
                self.limit = min(self._best_limit, self.ceiling)
                self._settle(latency)
        elif latency is not None and self._settled_latency is not None:
            no_gain = rate < self._best_rate * (1 + self.noise)
            if no_gain and latency > self._settled_latency * self.latency_rise:
                self.limit = max(self.floor, int(self.limit * self.latency_decrease))
                self.decreases += 1
                self._settled_latency = latency
            elif rate > self._best_rate:
                self._best_rate = rate
        self._restart_epoch()

    def _settle(self, latency: float | None) -> None:
        self.growing = False
        self._settled_latency = latency

    def _restart_epoch(self) -> None:
        self._epoch_started = self._clock()
        self._epoch_bytes_at_start = self._last_total
        self._latencies = []
        self._decreased_this_epoch = False

    def __repr__(self) -> str:
        return (
            f"AdaptiveParallelism(limit={self.limit}, ceiling={self.ceiling}, growing={self.growing}, "
            f"throttles={self.throttles})"
        )


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


class PermitGate:
    """At most ``limit()`` holders at once, where the limit may change at any time; thread-safe.

    Workers hold a permit while their part is in flight. ``stop`` (the upload's cancel/stop event) ends
    a wait: ``acquire`` then returns False.
    """

    def __init__(self, limit: Callable[[], int], stop: threading.Event | None = None) -> None:
        self._limit = limit
        self._stop = stop
        self._changed = threading.Condition()
        self.in_flight = 0
        self.most_in_flight = 0

    def acquire(self) -> bool:
        with self._changed:
            while self.in_flight >= max(1, self._limit()):
                if self._stop is not None and self._stop.is_set():
                    return False
                self._changed.wait(0.25)  # also picks up a raised limit without a notify
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            return True

    def release(self) -> None:
        with self._changed:
            self.in_flight -= 1
            self._changed.notify_all()

    def wake(self) -> None:
        """The limit changed: let waiters look again."""
        with self._changed:
            self._changed.notify_all()

    @contextmanager
    def permit(self) -> Iterator[bool]:
        acquired = self.acquire()
        try:
            yield acquired
        finally:
            if acquired:
                self.release()
