"""Uploading a stream of unknown size (a command's stdout), in parts that grow as it goes.

The main thread reads the stream one part at a time and hands each part to a worker; it waits
while ``workers`` parts are in flight, so at most (workers + 1) parts are ever in memory. Nothing is
completed unless the stream ended cleanly (``finish`` did not raise): a dump that fails half-way
must not leave a half dump in S3. A stream cannot be replayed, so there is no resume: any failure
aborts.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from airflow_mpu_provider.multipart.engine import BaseUploadEngine, UploadResult
from airflow_mpu_provider.multipart.errors import InvalidUploadRequest
from airflow_mpu_provider.multipart.plan import (
    DEFAULT_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    format_bytes,
    stream_capacity,
    stream_part_size,
)
from airflow_mpu_provider.multipart.progress import ProgressReporter


class Stream(Protocol):
    description: str

    def read(self, size: int) -> bytes: ...

    def finish(self) -> None: ...


class StreamUploadEngine(BaseUploadEngine):
    """Uploads a ``Stream`` (e.g. ``CommandSource``) to one key."""

    def __init__(
        self,
        client: Any,
        *,
        bucket: str,
        key: str,
        stream: Stream,
        first_part_size: int = DEFAULT_PART_SIZE,
        growing: bool = True,
        **kwargs: Any,
    ) -> None:
        if first_part_size < MIN_PART_SIZE:
            raise InvalidUploadRequest(
                f"part_size={first_part_size:,} bytes is below S3's minimum of {MIN_PART_SIZE:,} bytes (5 MiB)."
            )
        super().__init__(client, bucket=bucket, key=key, description=stream.description, **kwargs)
        self.stream = stream
        self.first_part_size = first_part_size
        self.growing = growing

    def run(self) -> UploadResult:
        started = time.monotonic()
        largest = stream_part_size(MAX_PARTS, self.first_part_size, growing=self.growing)
        workers = self.options.workers_for(largest if not self.growing else self.first_part_size)
        capacity = stream_capacity(self.first_part_size, growing=self.growing)
        self._create(
            f"parts of {format_bytes(self.first_part_size)}"
            + (f" growing to {format_bytes(largest)}" if self.growing else "")
            + f" (up to {format_bytes(capacity)})"
        )
        progress = ProgressReporter(
            total_bytes=None,
            total_parts=None,
            log=self.log,
            interval=self.options.progress_interval,
            label=f"s3://{self.bucket}/{self.key}",
        )
        entries: dict[int, dict[str, Any]] = {}
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mpu-part") as pool:
            try:
                with progress.ticking():  # a line every interval, even while the command is silent
                    total = self._send_stream(pool, workers, entries, progress)
                self.log.info("%s", progress.summary())
                self.stream.finish()  # raises if the command failed: nothing is completed then
                self._raise_if_cancelled()
                parts = [entries[n] for n in sorted(entries)]
                response = self._complete(parts, total)
            except BaseException as error:
                self._stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                self._after_failure(error, keep_on_failure=False)
                raise
        return self._result(
            response,
            size=total,
            part_size=self.first_part_size,
            parts=len(entries),
            sent=(len(entries), total),
            resumed=(0, 0),
            started=started,
        )

    def _send_stream(
        self,
        pool: ThreadPoolExecutor,
        workers: int,
        entries: dict[int, dict[str, Any]],
        progress: ProgressReporter,
    ) -> int:
        pending: set[Future[dict[str, Any]]] = set()
        total = 0
        number = 1
        while True:
            self._raise_if_cancelled()
            size = stream_part_size(number, self.first_part_size, growing=self.growing)
            data = self.stream.read(size)
            if not data and number > 1:
                break
            if number > MAX_PARTS:
                raise InvalidUploadRequest(
                    f"{self.description} is larger than 10,000 parts can hold "
                    f"({format_bytes(stream_capacity(self.first_part_size, growing=self.growing))}); "
                    "use a larger part_size."
                )
            pending = self._collect(pending, entries, until=workers - 1)  # bounded memory
            pending.add(pool.submit(self._send_stream_part, number, data, progress))
            total += len(data)
            number += 1
            if len(data) < size:
                break
        self._collect(pending, entries, until=0)
        return total

    def _send_stream_part(self, number: int, data: bytes, progress: ProgressReporter) -> dict[str, Any]:
        entry = self._put(number, data)
        progress.advance(len(data))
        return entry
