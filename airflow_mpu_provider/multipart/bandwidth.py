"""A bandwidth cap for one upload: a token bucket that every part's socket writes draw from.

A nightly dump must not saturate the production link (the ask behind boto3#1430, aws-cli#3969,
rclone#1944). Sleeping after each part would not do: a part is 16 MiB or more, so the link would
alternate between full speed and silence, and a cap shared by parallel parts needs one account. Here
the parts of one upload share one bucket, and each part body (``PartBody``) takes tokens for every
piece it hands to the socket, in pieces small enough (``chunk``) that the rate is smooth at any
time scale above a fraction of a second.

The bucket is a GCRA (the "virtual scheduling" form of a token bucket): one timestamp under a lock,
no refill loop. It starts empty, so the bytes let through by time ``t`` never exceed
``rate * t``: an upload of ``n`` bytes takes at least ``n / rate`` seconds, whatever the parts do.
After an idle spell it lets ``burst`` bytes through at once (about a quarter second's worth), not
more, so a pause for reading the disk does not turn into a spike on the link.

A cancel must not wait for tokens: a waiter sleeps on the upload's cancel ``threading.Event`` and
raises ``UploadCancelledError`` the moment it is set.

Only what goes to the socket is charged. botocore rewinds a body to retry it, and re-sent bytes are
charged again (they use the link). Its signer may read the body too, to hash it: awscrt's signer does so
through ``readinto`` (not charged), botocore's own (``BOTO_DISABLE_CRT``) through ``read``, which
``meter_only_what_is_sent`` keeps off the account by switching metering off from ``before-sign`` to
``before-send``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from airflow_mpu_provider.multipart import validation
from airflow_mpu_provider.multipart.errors import UploadCancelledError
from airflow_mpu_provider.multipart.parts.body import PartBody, SendMeter
from airflow_mpu_provider.multipart.units import KiB

#: Largest piece handed to the socket at once when throttled: what an unthrottled ``PartBody`` hands it.
#: Smaller pieces cost client CPU (more writes and wake-ups; measurably so at 256 KiB and 32 MiB/s in
#: benchmarks/bench_upload.py) and buy no smoothness that the kernel's socket buffers do not blur anyway.
MAX_CHUNK = 1024 * KiB
#: Smallest piece: below this, syscalls cost more than smoothness gains.
MIN_CHUNK = 4 * KiB
#: Pieces per second of the cap (``rate / CHUNKS_PER_SECOND``, within the bounds above; at 32 MiB/s,
#: 1 MiB pieces, 1/32 s of the link each): with 8 parts in flight each connection still gets a write
#: every quarter second at caps of 128 KiB/s and more, well inside S3's idle-connection timeout (~20 s).
CHUNKS_PER_SECOND = 32
#: Seconds of the cap that may go out at once after an idle spell.
BURST_SECONDS = 0.25

#: ``wait(seconds, cancel)``: sleep up to ``seconds``; True if ``cancel`` was set (then stop waiting).
Wait = Callable[[float, threading.Event | None], bool]


def _wait(seconds: float, cancel: threading.Event | None) -> bool:
    if cancel is None:
        time.sleep(seconds)
        return False
    return cancel.wait(seconds)


def chunk_for(rate: int) -> int:
    """Bytes per socket write under a cap of ``rate`` bytes/s: small enough to be smooth, large enough to be cheap."""
    return max(MIN_CHUNK, min(MAX_CHUNK, rate // CHUNKS_PER_SECOND))


class BandwidthLimit:
    """``rate`` bytes per second shared by every thread that calls ``take``; thread-safe.

    ``clock`` and ``wait`` are injectable so that tests drive time instead of sleeping.
    """

    def __init__(
        self,
        rate: int,
        *,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wait: Wait = _wait,
    ) -> None:
        self.rate = validation.max_bandwidth(rate)
        if self.rate is None:
            raise ValueError("BandwidthLimit needs a rate; use no limit (None) instead of a BandwidthLimit")
        self.chunk = chunk_for(self.rate)
        self.burst = max(self.chunk, int(self.rate * BURST_SECONDS)) if burst is None else burst
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1 byte, got {self.burst}")
        self._clock = clock
        self._wait = wait
        self._tolerance = self.burst / self.rate  # seconds of the cap the bucket may hold
        self._lock = threading.Lock()
        # The "theoretical arrival time": when the bytes taken so far are paid for. Starting one
        # tolerance ahead of now is starting with an empty bucket.
        self._paid_until = clock() + self._tolerance

    def take(self, size: int, cancel: threading.Event | None = None) -> None:
        """Return once ``size`` more bytes may be sent; raise UploadCancelledError as soon as ``cancel`` is set.

        Callers are served in the order they call: each reserves its slot under the lock and waits for it
        outside, so parallel parts share the rate evenly. A reservation is not given back on cancel: the
        upload stops then, and the bucket with it.
        """
        if size <= 0:
            return
        with self._lock:
            now = self._clock()
            self._paid_until = max(self._paid_until, now) + size / self.rate
            ready_at = self._paid_until - self._tolerance
        # Loop, not one wait: a wait may end early (clock granularity); the bound must hold anyway.
        while (delay := ready_at - self._clock()) > 0:
            if self._wait(delay, cancel):
                raise UploadCancelledError("upload cancelled while waiting for bandwidth (max_bandwidth)")

    def set_rate(self, rate: int) -> None:
        """Change the cap from now on (a bandwidth timetable's switch), smoothly: bytes already reserved keep
        their slots, later ones are paced at ``rate``; the chunk and the burst follow the new rate."""
        rate = validation.max_bandwidth(rate)
        if rate is None:
            raise ValueError("set_rate needs a rate")
        with self._lock:
            self.rate = rate
            self.chunk = chunk_for(rate)
            self.burst = max(self.chunk, int(rate * BURST_SECONDS))
            self._tolerance = self.burst / rate

    def body(
        self,
        data: bytes | bytearray | memoryview,
        cancel: threading.Event | None = None,
        meter: SendMeter | None = None,
    ) -> ThrottledPartBody:
        """A part body whose socket reads draw from this limit (what ``MultipartUpload.put_part`` sends)."""
        return ThrottledPartBody(data, cancel, self, meter)

    def __repr__(self) -> str:
        return f"BandwidthLimit(rate={self.rate}, burst={self.burst}, chunk={self.chunk})"


class ThrottledPartBody(PartBody):
    """A ``PartBody`` whose ``read`` (the socket path) hands out ``limit.chunk`` bytes at a time, each once
    ``limit`` allows it. A subclass, so that the unthrottled ``PartBody.read`` stays exactly as it was."""

    def __init__(
        self,
        data: bytes | bytearray | memoryview,
        cancel: threading.Event | None,
        limit: BandwidthLimit,
        meter: SendMeter | None = None,
    ) -> None:
        super().__init__(data, cancel, meter)
        self._limit = limit

    def read(self, size: int | None = -1) -> bytes | memoryview:  # type: ignore[override]
        start = self.tell()
        if not self.metered or start >= len(self._view):
            return super().read(size)
        if self.cancelled:
            raise UploadCancelledError("upload cancelled while sending a part")
        if size is None or size < 0:  # read-all callers (test stubs) get everything, once it is paid for
            self._limit.take(len(self._view) - start, self._cancel)
            return super().read()
        end = min(len(self._view), start + self._limit.chunk)
        self._limit.take(end - start, self._cancel)
        return self._hand_out(start, end)


def _body_of(request: Any) -> Any:
    """The body object of botocore's request: ``data`` before signing (AWSRequest), ``body`` after."""
    body = getattr(request, "data", None)
    return body if body is not None else getattr(request, "body", None)


def meter_only_what_is_sent(client: Any) -> None:
    """Charge a throttled part's bandwidth for its socket writes only, not for the signer's hashing pass.

    Every attempt is signed (``before-sign``) and then sent (``before-send``); metering is off in between.
    With awscrt's signer (the default) this changes nothing, as it reads through ``readinto``.
    """

    def pause(request: Any = None, **_: Any) -> None:
        body = _body_of(request)
        if isinstance(body, PartBody):
            body.metered = False

    def resume(request: Any = None, **_: Any) -> None:
        body = _body_of(request)
        if isinstance(body, PartBody):
            body.metered = True

    events = client.meta.events
    events.register_first("before-sign.s3.UploadPart", pause, unique_id="airflow-mpu-bandwidth-pause")
    events.register_first("before-send.s3.UploadPart", resume, unique_id="airflow-mpu-bandwidth-resume")


def bandwidth_limit(max_bandwidth: Any) -> BandwidthLimit | None:
    """The bucket for one run of an upload capped at ``max_bandwidth`` bytes/s, or None for no cap."""
    rate = validation.max_bandwidth(max_bandwidth)
    return None if rate is None else BandwidthLimit(rate)
