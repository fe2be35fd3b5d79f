"""The file engine's parts in flight under ``AdaptiveParallelism``: permits, rate samples, throttle signals.

The engine's pool has as many workers as the bounds allow (``max_concurrency``, and ``max_buffer_bytes``
over what a part in flight holds); each part holds a permit of a ``PermitGate`` while it is in flight,
and the gate admits as many as the controller's limit says at that moment. The rate is that of the bytes S3
acknowledged (parts answered), sampled as parts start and finish: the bytes the part bodies hand to their
sockets lead the link by the sockets' send buffers (up to several MiB per connection, most of a 5 MiB
part), which made a count with more parts look no faster on a 60 ms link. The controller decides on each
part's latency with the parts in flight around it (the mean of the counts at its start and its end).

A part answered SlowDown/503 is seen by a ``needs-retry`` handler before botocore retries it: the
controller is told (it halves the limit), and the part gives its permit back and waits for one under
the lowered limit before its retry goes out. Without that, every part already in flight would retry into
the same throttled store at once, and parts would exhaust their retries while the limit had long dropped.
The count the controller is told is the store's: the requests sent (``before-send``) and not yet answered
when the refused one was sent, not the parts holding a permit (some read their bytes, some wait to retry).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow_mpu_provider.multipart.errors import UploadCancelledError
from airflow_mpu_provider.multipart.parallelism import (
    ADAPTIVE_START,
    AdaptiveParallelism,
    PermitGate,
    start_for_round_trip,
)
from airflow_mpu_provider.multipart.progress import ProgressReporter

#: Error codes by which S3 and S3-compatible stores ask a client to slow down (with 503, or 429).
THROTTLE_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"})


def is_throttle(response: Any) -> bool:
    """Whether botocore's ``(http_response, parsed)`` is a store asking to slow down."""
    if not isinstance(response, tuple) or len(response) != 2:
        return False
    http, parsed = response
    code = (parsed or {}).get("Error", {}).get("Code") if isinstance(parsed, dict) else None
    return getattr(http, "status_code", None) in (503, 429) or code in THROTTLE_CODES


class AdaptiveParts:
    """Parts in flight of one file upload, as many as ``controller.limit`` allows at each moment."""

    def __init__(self, controller: AdaptiveParallelism, stop: threading.Event, log: logging.Logger) -> None:
        self.controller = controller
        self.gate = PermitGate(lambda: controller.limit, stop)
        self.log = log
        self._local = threading.local()
        self._progress: ProgressReporter | None = None
        self._acknowledged = 0  # bytes of the parts S3 answered
        self._count_lock = threading.Lock()
        self._at_store = 0  # UploadPart requests of this upload sent and not yet answered

    def watch(self, client: Any) -> None:
        """Hear of SlowDown/503 answers to UploadPart on ``client`` (only those of this upload's workers)."""
        client.meta.events.register_first(
            "needs-retry.s3.UploadPart", self._on_needs_retry, unique_id=f"airflow-mpu-adaptive-{id(self)}"
        )
        client.meta.events.register(
            "before-send.s3.UploadPart", self._on_before_send, unique_id=f"airflow-mpu-adaptive-send-{id(self)}"
        )

    @contextmanager
    def part(self, progress: ProgressReporter, length: int = 0) -> Iterator[None]:
        """Hold a permit while a part is in flight; raises UploadCancelledError if stopped while waiting."""
        self._progress = progress
        self._sample()
        if not self.gate.acquire():
            raise UploadCancelledError("stopped before sending a part")
        self._local.holding = True
        started = time.monotonic()
        token = self.controller.part_started()
        at_start = self.gate.in_flight
        try:
            yield
            with self._count_lock:
                self._acknowledged += length
        finally:
            self._answered()  # a request ended without botocore's needs-retry (an error in sending it)
            at_end = self.gate.in_flight
            if getattr(self._local, "holding", False):
                self._local.holding = False
                self.gate.release()
            # Little's law needs the parts in flight around this one: the limit, or fewer at the file's tail.
            self.controller.part_done(time.monotonic() - started, (at_start + at_end) / 2, token)
            self._sample()

    def _sample(self) -> None:
        progress = self._progress
        if progress is None:
            return
        before = self.controller.limit
        if self._said_change(before, self.controller.sent(self._acknowledged)):
            self.gate.wake()

    def _said_change(self, before: int, after: int) -> bool:
        """Log a change of the limit (and say whether there was one)."""
        if after != before:
            self.log.info("Parts in flight: %d -> %d (%s).", before, after, self.controller.reason)
        return after != before

    def _on_before_send(self, **_: Any) -> None:
        if not getattr(self._local, "holding", False):
            return
        self._answered()
        with self._count_lock:
            self._at_store += 1
            self._local.met = self._at_store  # the store's count this request meets, itself included
            self._local.at_store = True

    def _answered(self) -> None:
        if getattr(self._local, "at_store", False):
            with self._count_lock:
                self._at_store -= 1
            self._local.at_store = False

    def _on_needs_retry(self, response: Any = None, **_: Any) -> None:
        self._answered()
        if not getattr(self._local, "holding", False) or not is_throttle(response):
            return
        before = self.controller.limit
        met = getattr(self._local, "met", None) or self.gate.in_flight
        after = self.controller.throttled(met)
        if after != before:
            self.log.warning(
                "The store asks to slow down (SlowDown/503) to a part sent with %d request(s) in flight: %d -> %d, "
                "and never again more than %d.",
                met,
                before,
                after,
                self.controller.ceiling,
            )
        # Out of flight while throttled: the retry waits for a permit under the lowered limit.
        self._local.holding = False
        self.gate.release()
        if self.gate.acquire():
            self._local.holding = True

    def begin_for_round_trip(self, seconds: float | None) -> None:
        """Before the first part: start at the count the store's quickest answer (``seconds``) calls for."""
        if seconds is None:
            return
        before = self.controller.limit
        wanted = start_for_round_trip(seconds, self.controller.ceiling)
        self._said_change(before, self.controller.begin_at(wanted, f"the store answered in {seconds * 1000:.0f} ms"))

    @property
    def settled(self) -> int:
        return self.controller.limit

    def summary(self) -> str:
        c = self.controller
        return (
            f"parts in flight settled at {c.limit} (adaptive, bounds {c.floor}..{c.ceiling}; went {c.path()}; "
            f"most at once {self.gate.most_in_flight}; throttled {c.throttles} time(s); last: {c.reason})"
        )


def adaptive_parts_for(
    options: Any, part_size: int, client: Any, stop: threading.Event, log: logging.Logger
) -> AdaptiveParts | None:
    """The adaptive parts in flight for ``options`` (an ``UploadOptions``), or None when ``concurrency`` is fixed."""
    if options.concurrency is not None:
        return None
    bound = options.file_workers_for(part_size)  # max_concurrency, within max_buffer_bytes at one chunk a part
    parts = AdaptiveParts(AdaptiveParallelism(start=min(ADAPTIVE_START, bound), ceiling=bound), stop, log)
    parts.watch(client)
    return parts
