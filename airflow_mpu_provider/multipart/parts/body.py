"""How a part's bytes travel: a body botocore can rewind and send, and that a cancel stops mid-part.

Cancelling a multi-GiB part must not wait for the part to finish, nor for botocore to retry it ten
times: ``PartBody`` raises from ``read`` once the cancel event is set, and ``never_retry_cancelled_parts``
tells the client not to take that for a broken connection worth retrying.
"""

from __future__ import annotations

import io
import threading
from typing import Any, Protocol

from airflow_mpu_provider.multipart.errors import UploadCancelledError

#: How much one read() of a part body hands to the socket: large writes, few syscalls.
_BODY_CHUNK = 1024 * 1024


class SendMeter(Protocol):
    """Told what a part body hands to the HTTP layer: ``new`` bytes never handed out before, and
    ``resent`` bytes handed out again (botocore rewound the body to retry the request)."""

    def sent(self, new: int, resent: int) -> None: ...


class PartBody(io.RawIOBase):
    """A part's bytes as a seekable file whose reads stop as soon as ``cancel`` is set.

    botocore rewinds it for retries and reads it to send; handing it a file rather than bytes is
    what lets on_kill interrupt a multi-GiB part mid-body (the idea of s3transfer's InterruptReader).
    ``read`` (the socket path) returns memoryview slices of at least 1 MiB: nothing is copied and
    sockets see large writes; each read is reported to ``meter`` (progress in bytes as they go out).
    ``readinto`` (how awscrt's signer hashes the body) is not reported.

    ``data`` is shared, never copied: bytes, or the bytearray/memoryview a stream was read into (a
    ``BytesIO`` would copy those, a second part-sized buffer that ``max_buffer_bytes`` did not count).
    """

    def __init__(
        self,
        data: bytes | bytearray | memoryview,
        cancel: threading.Event | None = None,
        meter: SendMeter | None = None,
    ) -> None:
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._pos = 0
        self._cancel = cancel
        self._meter = meter
        self._handed_out = 0  # the furthest byte ever read by the socket path: beyond it, bytes are new
        #: Whether reads go to the socket (reported, and charged by a bandwidth cap); off while botocore's
        #: own signer hashes the body (``meter_only_what_is_sent``).
        self.metered = True

    def __len__(self) -> int:
        return len(self._view)

    @property
    def cancelled(self) -> bool:
        return self._cancel is not None and self._cancel.is_set()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:  # type: ignore[override]
        target = memoryview(buffer).cast("B")
        start = min(self._pos, len(self._view))
        n = min(len(target), len(self._view) - start)
        target[:n] = self._view[start : start + n]
        self._pos = start + n
        return n

    def read(self, size: int | None = -1) -> bytes | memoryview:  # type: ignore[override]
        start = min(self._pos, len(self._view))
        if self.cancelled and start < len(self._view):  # a body already sent has nothing left to stop
            raise UploadCancelledError("upload cancelled while sending a part")
        if size is None or size < 0:  # read-all callers (test stubs, in-process moto) expect real bytes
            self._pos = len(self._view)
            self._report(start, self._pos)
            return bytes(self._view[start:])
        return self._hand_out(start, min(len(self._view), start + max(size, _BODY_CHUNK)))

    def _hand_out(self, start: int, end: int) -> memoryview:
        """Bytes ``start:end`` for the socket, without a copy; reported to the meter."""
        self._pos = end
        self._report(start, end)
        return self._view[start:end]

    def _report(self, start: int, end: int) -> None:
        if not self.metered or end <= start:
            return
        new = max(0, end - max(start, self._handed_out))
        self._handed_out = max(self._handed_out, end)
        if self._meter is not None:
            self._meter.sent(new, end - start - new)


def _cancellation_in(error: BaseException | None) -> UploadCancelledError | None:
    """Our cancellation, if ``error`` is it or was caused by it.

    A body's ``read`` raising inside urllib3 reaches botocore unwrapped, and botocore's HTTP session
    wraps it as ``HTTPClientError(error=...)`` (raised inside the ``except``, so also its context);
    the chain is followed through ``kwargs["error"]``, ``__cause__`` and ``__context__``.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UploadCancelledError):
            return error
        seen.add(id(error))
        details = getattr(error, "kwargs", None)  # botocore's exceptions keep their arguments here
        wrapped = details.get("error") if isinstance(details, dict) else None
        error = wrapped if isinstance(wrapped, BaseException) else (error.__cause__ or error.__context__)
    return None


def never_retry_cancelled_parts(client: Any) -> None:
    """Make a cancelled part fail at once instead of being retried by botocore.

    A cancelled ``PartBody`` raises from ``read``; botocore takes that for a broken connection and, in
    standard mode, retries it up to 10 times with backoff, which kept ``on_kill`` waiting 25-110 s.
    This handler runs before botocore's retry handlers (most specific event, registered first) and
    re-raises the cancellation, so nothing retries it; every other error keeps the client's retry
    budget. A network error on a part whose body is already cancelled is not retried either.
    """

    def refuse_retry(caught_exception: BaseException | None = None, request_dict: Any = None, **_: Any) -> None:
        cancellation = _cancellation_in(caught_exception)
        if cancellation is not None:
            raise cancellation
        body = request_dict.get("body") if isinstance(request_dict, dict) else None
        if caught_exception is not None and isinstance(body, PartBody) and body.cancelled:
            raise UploadCancelledError("upload cancelled while sending a part") from caught_exception

    client.meta.events.register_first(
        "needs-retry.s3.UploadPart", refuse_retry, unique_id="airflow-mpu-never-retry-cancelled-parts"
    )
