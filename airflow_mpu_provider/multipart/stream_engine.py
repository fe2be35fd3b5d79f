"""Uploading a stream of unknown size (a command's stdout), in parts that grow as it goes.

The main thread reads the stream one part at a time and hands each part to a worker. Parallelism
follows the size of the part about to be read: before reading it, the reader waits until that part
fits beside the parts still in flight within ``max_buffer_bytes`` (counted in bytes, so parts of two
sizes in flight at a tier change are counted right). With the defaults (16 MiB first parts, 1 GiB)
that is 8 parts in flight at first and fewer as parts double every 1,000 parts, down to one part at a
time once two no longer fit; a single part larger than ``max_buffer_bytes`` is then the bound.

Nothing is completed unless the stream ended cleanly (``finish`` did not raise): a dump that fails
half-way must not leave a half dump in S3. A stream cannot be replayed, so there is no resume: any
failure aborts, including a failure to record the UploadId right after it was created.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from airflow_mpu_provider.multipart.base_engine import BaseUploadEngine
from airflow_mpu_provider.multipart.errors import InvalidUploadRequest
from airflow_mpu_provider.multipart.parts.plan import (
    DEFAULT_PART_SIZE,
    MAX_PARTS,
    STREAM_PARTS_PER_SIZE,
    check_part_size,
    stream_capacity,
    stream_part_size,
)
from airflow_mpu_provider.multipart.parts.record import PartRecord
from airflow_mpu_provider.multipart.progress import ProgressReporter
from airflow_mpu_provider.multipart.result import UploadResult
from airflow_mpu_provider.multipart.units import format_bytes

#: A part as a stream hands it over: bytes, or the buffer (or a view of it) it was read into.
PartData = bytes | bytearray | memoryview


class Stream(Protocol):
    description: str

    def read(self, size: int) -> PartData:
        """Exactly ``size`` bytes unless the stream ended; one buffer, not a copy of one. A ``bytes``
        holds its length; a bytearray or a view of one holds ``size`` (the buffer it was read into)."""
        ...

    def finish(self) -> None:
        """Raise unless the stream ended cleanly (e.g. the command exited 0)."""
        ...


class _PartBuffer:
    """A part's bytes handed to a worker, which takes them out: once the worker is done, nothing
    (not the executor's work item either) keeps the buffer alive while the reader reads the next."""

    __slots__ = ("data", "held")

    def __init__(self, data: PartData, held: int) -> None:
        self.data: PartData | None = data
        #: The bytes of memory the part holds (counted in the budget until the worker is done).
        self.held = held

    def take(self) -> PartData:
        data, self.data = self.data, None
        assert data is not None
        return data


class StreamUploadEngine(BaseUploadEngine):
    """Uploads a ``Stream`` (e.g. ``CommandSource``) to one key, within ``max_buffer_bytes`` of part
    bytes in memory (in flight plus the one being read; one part if a single part is larger)."""

    def __init__(
        self,
        client: Any,
        *,
        bucket: str,
        key: str,
        stream: Stream,
        first_part_size: int = DEFAULT_PART_SIZE,
        growing: bool = True,
        parts_per_size: int = STREAM_PARTS_PER_SIZE,
        **kwargs: Any,
    ) -> None:
        """``parts_per_size``: parts of one size before the size doubles (tests lower it to reach
        big parts with a short stream; production keeps the default)."""
        check_part_size(first_part_size)
        if parts_per_size < 1:
            raise InvalidUploadRequest(f"parts_per_size must be >= 1, got {parts_per_size}")
        super().__init__(client, bucket=bucket, key=key, description=stream.description, **kwargs)
        self.stream = stream
        self.first_part_size = first_part_size
        self.growing = growing
        self.parts_per_size = parts_per_size

    def size_of_part(self, number: int) -> int:
        """The size of part ``number`` (1-based): the first part size, doubled every ``parts_per_size`` parts
        when growing."""
        return stream_part_size(number, self.first_part_size, growing=self.growing, parts_per_size=self.parts_per_size)

    def capacity(self) -> int:
        return stream_capacity(self.first_part_size, growing=self.growing, parts_per_size=self.parts_per_size)

    def run(self) -> UploadResult:
        started = time.monotonic()
        largest = self.size_of_part(MAX_PARTS)
        # Parts only grow, so the first size needs the most workers; later sizes use fewer of them.
        workers = self.options.workers_for(self.first_part_size, held_by_reader=1)
        progress = ProgressReporter(
            total_bytes=None,
            total_parts=None,
            log=self.log,
            interval=self.options.progress_interval,
            label=f"s3://{self.bucket}/{self.key}",
        )
        records: dict[int, PartRecord] = {}
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mpu-part") as pool:
            try:
                # Created inside the scope that aborts: if recording the UploadId (on_upload_started)
                # fails, the fresh upload is aborted rather than left behind.
                self._create(
                    f"parts of {format_bytes(self.first_part_size)}"
                    + (f" growing to {format_bytes(largest)}" if self.growing else "")
                    + f" (up to {format_bytes(self.capacity())}), at most "
                    f"{format_bytes(self.options.max_buffer_bytes)} of them in memory{self._cap_note()}"
                )
                with progress.ticking():  # a line every interval, even while the command is silent
                    total = self._send_stream(pool, workers, records, progress)
                self.log.info("%s", progress.summary())
                self.stream.finish()  # raises if the command failed: nothing is completed then
                self._raise_if_cancelled()
                parts = [records[n] for n in sorted(records)]
                response = self._complete(parts, total)
            except BaseException as error:
                self._stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                if self.upload is not None and self.upload.upload_id:  # nothing to clean if none was created
                    self._after_failure(error, keep_on_failure=False)
                raise
        return self._result(
            response,
            size=total,
            part_size=self.first_part_size,
            parts=len(records),
            sent=(len(records), total),
            resumed=(0, 0),
            started=started,
        )

    def _send_stream(
        self,
        pool: ThreadPoolExecutor,
        workers: int,
        records: dict[int, PartRecord],
        progress: ProgressReporter,
    ) -> int:
        pending: set[Future[PartRecord]] = set()
        total = 0
        number = 1
        announced = 0  # the parallelism last logged
        while True:
            self._raise_if_cancelled()
            size = self.size_of_part(number)
            if number > MAX_PARTS:
                if not self.stream.read(1):  # exactly 10,000 parts' worth: the stream ended in time
                    break
                raise InvalidUploadRequest(
                    f"{self.description} is larger than 10,000 parts can hold ({format_bytes(self.capacity())}); "
                    "use a larger part_size."
                )
            allowed = min(workers, self.options.workers_for(size, held_by_reader=1))
            if allowed != announced:
                announced = allowed
                self.log.info(
                    "Parts of %s from part %d on: %d in flight while the next is read (max_buffer_bytes %s).",
                    format_bytes(size),
                    number,
                    allowed,
                    format_bytes(self.options.max_buffer_bytes),
                )
            # Bounded memory: the next part is read only once it fits beside those in flight.
            pending = self._make_room(pending, records, size, allowed)
            data = self._read_part(size)
            held = len(data) if isinstance(data, bytes) else size
            self.buffers.give_back(size - held)  # the rest stays held until the part's worker is done
            if not data and number > 1:
                self.buffers.give_back(held)
                break
            pending.add(pool.submit(self._send_stream_part, number, _PartBuffer(data, held), progress))
            total += len(data)
            number += 1
            short = len(data) < size
            del data
            if short:
                break
        self._collect(pending, records, until=0)
        return total

    def _read_part(self, size: int) -> PartData:
        """The next part, counted at its full size while it is read (its buffer is allocated whole)."""
        self.buffers.take(size)
        try:
            return self.stream.read(size)
        except BaseException:
            self.buffers.give_back(size)
            raise

    def _make_room(
        self, pending: set[Future[PartRecord]], records: dict[int, PartRecord], size: int, allowed: int
    ) -> set[Future[PartRecord]]:
        """Wait for finished parts (filing them into ``records``) until at most ``allowed`` are in
        flight and a part of ``size`` bytes fits beside them in the buffer budget; a failed part raises here.

        The short wait keeps the reader responsive to cancel() and on_kill.
        """
        return self._collect(pending, records, until=allowed, room_for=size)

    def _send_stream_part(self, number: int, buffer: _PartBuffer, progress: ProgressReporter) -> PartRecord:
        data = buffer.take()
        size = len(data)
        meter = progress.part_meter()
        try:
            record = self._put(number, data, meter)
        finally:
            del data  # the last reference: the bytes are freed here, before they are given back
            self.buffers.give_back(buffer.held)
        progress.advance(size, meter)
        return record
