"""How many parts to keep in flight: found while the upload runs, not fixed in advance.

On a lossy or long link each TCP connection is held to about MSS/RTT x 1.22/√loss, so an upload's
throughput follows the number of parts in flight; on loopback or a short link a few are enough and
more only cost CPU. ``AdaptiveParallelism`` finds the count as TCP finds its window: **slow start, then
AIMD**, judged on **part latency** (Little's law) rather than on the acknowledged-byte rate.

What it measures. After every change of the count, an *observation* collects the parts that started at
the new count (never those already in flight before the change: they say nothing about it) until half a
round of them (``parts_per_epoch`` x the count) finished and ``epoch`` seconds passed. Their median latency
``L`` and the parts really in flight ``n`` (the count, less at the tail of a file) give the throughput by
Little's law, ``n / L`` parts per second. Parts of the observation still in flight count with their age
so far: the first parts to finish are the fastest, and on a lossy link their median alone ran 40 % low.
(A quarter of a round per observation was tried: on branch its median, nearly the time of the 2nd of 8
parts, was a lucky 5.7 s against 14 s for the rest, and that "lowest latency" ended slow start at 16.)

Why not the rate of acknowledged bytes (the first version): for one part latency after a change, the
bytes acknowledged are those of parts started *before* it, so an epoch shorter than a part (3 s against
14-17 s per 5 MiB part on a 100 Mbit/s, 80 ms, 0.5 % loss link) saw no gain from the parts just added and
stopped growing at 8-16 while part latency stayed flat; and a few 5 MiB parts per epoch made that rate
jump by a part's worth either way. The median latency of the parts at the new count has neither problem.

The rule, after each observation at ``n`` parts with median latency ``L``:

* **Flat latency means room: grow.** While ``L`` stays within ``flat`` (25 %) of the lowest latency seen
  (TCP Vegas' BaseRTT), parts are not queueing anywhere: each connection is held by its own RTT and loss,
  not by a full link, store or CPU, so more parts bring proportionally more. In *slow start* (from the
  beginning until the first sign of a full link) the count quadruples (``slow_start_factor``: TCP doubles
  its window each RTT, but an observation here lasts a part's latency, 14 s on branch, and doubling from 8
  took 33 s of a 58 s upload to reach 32 there); afterwards it grows by ``step``.
* **Latency rising, but with gain: grow too.** If the throughput ``n / L`` rose enough that each added
  part brought at least ``efficiency`` (a quarter) of a part's share at the best count, the count grows as
  for flat latency. (Slow start first ended on the first latency above 25 %: on branch a lucky first
  observation, 11.7 s against 14-16 s for the rest, ended it at 16 with n / L up 45 %.)
* **Latency rising with no gain: settle.** The link (or store, or CPU) is full: slow start ends, and the
  count goes back to what fills the best throughput seen at the lowest latency, with the 25 % margin
  (``ceil(best n / L x lowest L x 1.25)``, BBR's in-flight target of bottleneck rate x minimum RTT), at
  most the count that measured best, and holds it.
* **Probe upward after settling.** Every ``probe_every`` observations the settled count tries ``step``
  more; kept (and growth resumes) if latency stayed flat or the gain test passes, undone otherwise. A link
  whose share grows (another upload finished) is found again.
* **Multiplicative decrease on throttling** (a SlowDown / 503 answer to a part): the count halves at once
  (at most once an observation), and the store's count the refused request met (the requests sent and not
  yet answered when it was sent, itself included) becomes a ceiling never reached again: 8 sent at once to
  a store that takes 3 leave a ceiling of 3 (the 4th was refused with 3 others there), where counting the
  parts holding a permit (some still reading their bytes, some waiting out a retry) left 4, which the
  store's "more than 3" happened not to refuse before a short upload ended;
  growth resumes one part at a time below it. Halving is what makes many clients sharing a throttled
  prefix converge to a fair share (the TCP argument); a ceiling keeps one client from probing the store's
  limit over and over, each probe costing retried parts.
* a gentler decrease (x 0.75) once settled when part latency rises by half with no gain: the parts queue
  somewhere (a shared link, a busy store), and fewer of them send as fast.

Bounds: ``floor`` and ``ceiling`` (``max_concurrency``, within ``max_buffer_bytes``: see
``adaptive_parts.adaptive_parts_for``), and the ceiling a throttle sets. Everything here is arithmetic on
what it is told plus an injected clock: tests feed it synthetic latencies and rates. ``PermitGate`` applies
the count to the engine's workers at runtime.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Parts in flight an adaptive upload starts with (the fixed default before it adapted).
ADAPTIVE_START = 8
#: Default upper bound on parts in flight (``max_concurrency``).
DEFAULT_MAX_CONCURRENCY = 64
#: ``ADAPTIVE_START`` parts in flight for each this many seconds of the store's quickest answer.
ROUND_TRIP_PER_START = 0.025


def start_for_round_trip(seconds: float | None, bound: int) -> int:
    """The parts in flight to start with when the store's quickest answer took ``seconds``.

    A connection's rate falls as its round trip grows (slow start and loss recovery both advance once a
    round trip), so the parts that fill a link grow with it: ``ADAPTIVE_START`` (which fills loopback
    and a 10 ms region link, answers in under 25 ms) per 25 ms, within ``1..bound``. A link answering in
    165 ms (80 ms RTT, a new connection: branch) starts at 56 instead of spending its first two rounds of
    12-15 s parts at 8 and 32; s3transfer's CRT manager likewise opens its connections at once.
    """
    if seconds is None or seconds <= 0:
        return min(ADAPTIVE_START, bound)
    return max(1, min(bound, ADAPTIVE_START * max(1, round(seconds / ROUND_TRIP_PER_START))))


class AdaptiveParallelism:
    """Slow start and AIMD on the number of parts in flight; thread-safe. ``limit`` is the count to keep now.

    Feed it ``part_started()`` as a part goes into flight (optional), ``part_done(seconds, in_flight, token)``
    as parts finish (seconds from the part's first byte handed out to S3's answer; ``in_flight``: parts in
    flight around it; ``token``: what ``part_started`` returned), ``sent(total_bytes)`` whenever convenient
    (the bytes S3 acknowledged so far: decisions are taken there; their rate is kept in ``rate``), and
    ``throttled(in_flight)`` on SlowDown/503. ``reason`` says why the last change was made; ``history``
    keeps every decision (seconds from the start, the count decided, and why) for the log and benchmarks.
    """

    def __init__(
        self,
        *,
        start: int = ADAPTIVE_START,
        ceiling: int = DEFAULT_MAX_CONCURRENCY,
        floor: int = 1,
        step: int = 4,
        epoch: float = 3.0,
        efficiency: float = 0.25,
        flat: float = 0.25,
        noise: float = 0.10,
        decrease: float = 0.5,
        latency_decrease: float = 0.75,
        latency_rise: float = 1.5,
        parts_per_epoch: float = 0.5,
        probe_every: int = 2,
        slow_start_factor: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= floor <= ceiling:
            raise ValueError(f"need 1 <= floor <= ceiling, got floor={floor}, ceiling={ceiling}")
        self.floor = floor
        self.ceiling = ceiling
        self.step = max(1, step)
        self.epoch = epoch
        self.efficiency = efficiency
        self.flat = flat
        self.noise = noise
        self.decrease = decrease
        self.latency_decrease = latency_decrease
        self.latency_rise = latency_rise
        #: An observation also lasts until this fraction of ``limit`` parts, started at it, finished.
        self.parts_per_epoch = parts_per_epoch
        self.probe_every = max(1, probe_every)
        #: Slow start multiplies the count by this after each flat observation (TCP doubles a window per RTT;
        #: an observation here costs a part's latency, 14 s on branch, so it quadruples).
        self.slow_start_factor = max(2, slow_start_factor)
        self._clock = clock
        self._lock = threading.Lock()
        self.limit = min(max(start, floor), ceiling)
        self.growing = True
        self.slow_start = True
        #: Times a part was throttled, and decreases made for it or for latency (for the log).
        self.throttles = 0
        self.decreases = 0
        self.probes = 0
        self.reason = "start"
        self._started = clock()
        self.history: list[tuple[float, int, str]] = [(0.0, self.limit, "start")]
        self._base_latency: float | None = None  # the lowest median part latency seen (Vegas' BaseRTT)
        self._best_throughput = 0.0  # the best n / L so far (parts per second), and the count that reached it
        self._best_limit = self.limit
        self._settled_latency: float | None = None
        self._settled_throughput = 0.0
        self._held = 0  # observations since settling (or since the last probe)
        self._probe_from: int | None = None  # the settled count a probe started from
        self._total = 0
        self._window_started = self._started
        self._window_bytes = 0
        self._samples: list[tuple[float, float]] = []  # (latency, parts in flight) of parts started at limit
        self._open: dict[int, float] = {}  # parts in flight (from ``part_started``): token -> start time
        self._token = 0
        self._decreased_this_window = False
        #: The acknowledged-byte rate over the last observation (bytes/s), for traces; decisions use n / L.
        self.rate = 0.0

    # -- what it is told -----------------------------------------------------------------------

    def sent(self, total_bytes: int) -> int:
        """S3 acknowledged ``total_bytes`` of the upload so far; returns the limit (maybe changed)."""
        with self._lock:
            self._total = total_bytes
            elapsed = self._clock() - self._window_started
            if elapsed >= self.epoch and len(self._samples) >= max(1, math.ceil(self.limit * self.parts_per_epoch)):
                self.rate = (total_bytes - self._window_bytes) / elapsed
                self._decide()
            return self.limit

    def part_started(self) -> int:
        """A part goes into flight now; returns the token to give ``part_done``. Optional: with it, the parts
        of an observation still in flight count with their age so far (a lower bound of their latency), so
        that the first parts to finish, the fastest, do not alone make the median."""
        with self._lock:
            self._token += 1
            self._open[self._token] = self._clock()
            return self._token

    def part_done(self, seconds: float, in_flight: float | None = None, token: int | None = None) -> None:
        """A part took ``seconds`` from its first byte handed out to S3's answer, with about ``in_flight``
        parts in flight meanwhile (default: the limit). Only parts that started at the current limit count."""
        with self._lock:
            self._open.pop(token, None)
            if self._clock() - seconds >= self._window_started - 1e-9:
                self._samples.append((seconds, float(self.limit if in_flight is None else in_flight)))

    def throttled(self, in_flight: int | None = None) -> int:
        """A part was answered SlowDown/503 when it met ``in_flight`` requests at the store, itself included:
        halve (once an observation) and never again reach the count that was refused. Returns the new limit.

        ``in_flight`` is best the store's own count: the requests sent and not yet answered when the refused
        one was sent (``AdaptiveParts`` counts them), not the parts holding a permit, some of which are still
        reading their bytes or waiting out a retry. Default: the limit."""
        with self._lock:
            self.throttles += 1
            level = self.limit if in_flight is None else in_flight
            self.ceiling = max(self.floor, min(self.ceiling, level - 1))
            if not self._decreased_this_window:
                self.decreases += 1
                self.growing, self.slow_start = True, False  # additive increase resumes below the ceiling,
                self.step = 1  # a part at a time
                self._best_throughput, self._probe_from = 0.0, None
                self._change(max(self.floor, int(self.limit * self.decrease)), "the store asks to slow down")
                self._decreased_this_window = True
            if self.limit > self.ceiling:
                self._change(self.ceiling, "the store asks to slow down")
                self._decreased_this_window = True
            return self.limit

    def begin_at(self, limit: int, reason: str) -> int:
        """Start at ``limit`` instead (within the bounds), before any part went into flight; returns the limit."""
        with self._lock:
            if self._token == 0 and not self._samples:
                self._change(limit, reason)
            return self.limit

    # -- the decisions -------------------------------------------------------------------------

    def _decide(self) -> None:
        now = self._clock()
        ages = [now - t for t in self._open.values() if t >= self._window_started - 1e-9]
        latency = _median([s[0] for s in self._samples] + ages)
        parts = _median([s[1] for s in self._samples])
        assert latency is not None and parts is not None
        latency = max(latency, 1e-6)
        throughput = parts / latency
        self._base_latency = latency if self._base_latency is None else min(self._base_latency, latency)
        flat = latency <= self._base_latency * (1 + self.flat)
        what = f"part latency {latency:.2f} s ({latency / self._base_latency:.2f}x the lowest) at {self.limit}"
        if self._probe_from is not None:
            self._end_probe(throughput, latency, flat, what)
        elif self.growing:
            gained = self._gained(throughput, parts)
            if throughput > self._best_throughput:
                self._best_throughput, self._best_limit = throughput, self.limit
            if flat or gained:
                if self.limit >= self.ceiling:
                    self._settle(latency, throughput, f"{what}: at the bound, holding")
                else:
                    grown = self.limit * self.slow_start_factor if self.slow_start else self.limit + self.step
                    how = f"x{self.slow_start_factor}" if self.slow_start else "adding"
                    why = f"flat: {how}" if flat else f"rising, with gain: {how}"
                    self._change(min(self.ceiling, grown), f"{what}, {why}")
            else:  # latency rose and the parts added brought too little: the fewer parts gave the same rate
                self.slow_start = False
                # Back to the count that fills what the link carried at the lowest latency (BBR's in-flight
                # target: bottleneck rate x minimum RTT), with the flat margin: a x4 step overshoots the knee,
                # and the count that measured best may be far past it.
                fill = math.ceil(self._best_throughput * self._base_latency * (1 + self.flat))
                best = min(self._best_limit, self.ceiling, max(self.floor, fill))
                self._settle(latency, throughput, f"{what}, rising with no gain: back to {best}, holding")
                if best != self.limit:  # what it holds at is measured afresh there
                    self._settled_latency, self._settled_throughput = None, 0.0
                    self._change(best, self.reason)
        else:
            self._held += 1
            if self._settled_latency is None:
                self._settled_latency = latency
            no_gain = throughput < self._settled_throughput * (1 + self.noise)
            if no_gain and latency > self._settled_latency * self.latency_rise:
                self.decreases += 1
                self._settled_latency = latency
                self._held = 0
                lower = max(self.floor, int(self.limit * self.latency_decrease))
                self._change(lower, f"{what}, risen by half with no gain: a quarter fewer")
            elif self._held >= self.probe_every and self.limit < self.ceiling:
                self._settled_throughput = max(self._settled_throughput, throughput)
                self._probe_from = self.limit
                self.probes += 1
                self._change(min(self.ceiling, self.limit + self.step), f"settled at {self.limit}: probing upward")
            else:
                self._settled_throughput = max(self._settled_throughput, throughput)
        self._restart_window()

    def _gained(self, throughput: float, parts: float) -> bool:
        """Whether the parts added since the best count each brought at least ``efficiency`` of its share."""
        if self._best_throughput == 0:
            return True
        added = max(0.0, (parts - self._best_limit) / self._best_limit)
        return throughput >= self._best_throughput * (1 + self.efficiency * added) and added > 0

    def _end_probe(self, throughput: float, latency: float, flat: bool, what: str) -> None:
        start = self._probe_from
        assert start is not None
        self._probe_from = None
        self._held = 0
        added = (self.limit - start) / start
        if flat or throughput >= self._settled_throughput * (1 + self.efficiency * added):
            self.growing = True  # the link had room after all: additive growth resumes
            self._best_throughput, self._best_limit = throughput, self.limit
            self._change(min(self.ceiling, self.limit + self.step), f"{what}: the probe gained, adding")
        else:
            self._change(start, f"{what}: the probe brought nothing, back to {start}")

    def _settle(self, latency: float, throughput: float, reason: str) -> None:
        self.growing = False
        self._settled_latency = latency
        self._settled_throughput = throughput
        self._held = 0
        self.reason = reason
        self.history.append((round(self._clock() - self._started, 2), self.limit, reason))

    def _change(self, limit: int, reason: str) -> None:
        limit = min(max(limit, self.floor), self.ceiling)
        if limit != self.limit:
            self.limit = limit
            self.reason = reason
            self.history.append((round(self._clock() - self._started, 2), limit, reason))
            self._restart_window()

    def _restart_window(self) -> None:
        self._window_started = self._clock()
        self._window_bytes = self._total
        self._samples = []
        self._decreased_this_window = False

    def path(self) -> str:
        """The counts it went through, e.g. ``8 -> 16 -> 32 -> 36 -> 32``."""
        counts = [self.history[0][1]]
        for _, limit, _ in self.history[1:]:
            if limit != counts[-1]:
                counts.append(limit)
        return " -> ".join(str(c) for c in counts)

    def __repr__(self) -> str:
        return (
            f"AdaptiveParallelism(limit={self.limit}, ceiling={self.ceiling}, growing={self.growing}, "
            f"slow_start={self.slow_start}, throttles={self.throttles})"
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
