"""How a part's bytes travel: a body botocore can rewind and send, and that a cancel stops mid-part.

Cancelling a multi-GiB part must not wait for the part to finish, nor for botocore to retry it ten
times: ``PartBody`` raises from ``read`` once the cancel event is set, and ``never_retry_cancelled_parts``
tells the client not to take that for a broken connection worth retrying.
"""

from __future__ import annotations

import io
import threading
from typing import Any

from airflow_mpu_provider.multipart.errors import UploadCancelledError

#: How much one read() of a part body hands to the socket: large writes, few syscalls.
_BODY_CHUNK = 1024 * 1024


class PartBody(io.BytesIO):
    """A part's bytes as a seekable file whose reads stop as soon as ``cancel`` is set.

    botocore rewinds it for retries and reads it to send; handing it a file rather than bytes is
    what lets on_kill interrupt a multi-GiB part mid-body (the idea of s3transfer's InterruptReader).
    ``read`` (the socket path) returns memoryview slices of at least 1 MiB: nothing is copied and
    sockets see large writes. ``readinto`` stays BytesIO's C implementation, because awscrt's signer
    reads the body through it 8 KiB at a time. BytesIO shares ``data`` rather than copying it.
    """

    def __init__(self, data: bytes, cancel: threading.Event | None = None) -> None:
        super().__init__(data)
        self._view = memoryview(data)
        self._cancel = cancel

    def __len__(self) -> int:
        return len(self._view)

    @property
    def cancelled(self) -> bool:
        return self._cancel is not None and self._cancel.is_set()

    def read(self, size: int | None = -1) -> bytes | memoryview:  # type: ignore[override]
        start = self.tell()
        if self.cancelled and start < len(self._view):  # a body already sent has nothing left to stop
            raise UploadCancelledError("upload cancelled while sending a part")
        if size is None or size < 0:  # read-all callers (test stubs) expect real bytes
            return super().read()
        end = min(len(self._view), start + max(size, _BODY_CHUNK))
        self.seek(end)
        return self._view[start:end]


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
