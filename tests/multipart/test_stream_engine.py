from __future__ import annotations

import hashlib
import threading
import tracemalloc

import pytest

from airflow_mpu_provider.multipart.errors import CommandFailedError, InvalidUploadRequest
from airflow_mpu_provider.multipart.options import UploadOptions
from airflow_mpu_provider.multipart.parts.plan import (
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    stream_capacity,
    stream_part_size,
)
from airflow_mpu_provider.multipart.sources.command import CommandSource
from airflow_mpu_provider.multipart.stream_engine import StreamUploadEngine
from airflow_mpu_provider.multipart.units import GiB, MiB, TiB
from tests.conftest import incomplete_uploads

BUCKET = "test-bucket"
WRITE_50_MIB = 'python3 -c "import sys; sys.stdout.buffer.write(bytes(range(256)) * 204800)"'


def test_stream_parts_grow_every_thousand_parts_up_to_5_gib():
    assert stream_part_size(1) == stream_part_size(1000) == 16 * MiB
    assert stream_part_size(1001) == 32 * MiB
    assert stream_part_size(10_000) == MAX_PART_SIZE
    assert stream_part_size(5000, 8 * MiB, growing=False) == 8 * MiB


def test_stream_capacity():
    assert 12 * TiB < stream_capacity() < 13 * TiB  # vs. 156 GiB with fixed 16 MiB parts
    assert stream_capacity(16 * MiB, growing=False) == 10_000 * 16 * MiB
    assert stream_capacity(5 * GiB) == MAX_OBJECT_SIZE


def engine(client, stream, **kwargs):
    return StreamUploadEngine(
        client,
        bucket=BUCKET,
        key="stream",
        stream=stream,
        first_part_size=5 * MiB,
        options=UploadOptions(progress_interval=0, concurrency=2),
        **kwargs,
    )


def test_command_output_arrives_byte_identical(mock_s3):
    with CommandSource(WRITE_50_MIB) as source:
        result = engine(mock_s3, source).run()
    expected = bytes(range(256)) * 204800
    assert result.size == len(expected) and result.parts == 10
    body = mock_s3.get_object(Bucket=BUCKET, Key="stream")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest()


def test_empty_output_is_a_zero_byte_object(mock_s3):
    with CommandSource("true") as source:
        result = engine(mock_s3, source).run()
    assert result.size == 0 and result.parts == 1
    assert mock_s3.head_object(Bucket=BUCKET, Key="stream")["ContentLength"] == 0


def test_command_failing_half_way_leaves_nothing(mock_s3):
    command = "python3 -c \"import sys; sys.stdout.buffer.write(b'x' * 12_000_000); sys.exit(4)\""
    with CommandSource(command) as source, pytest.raises(CommandFailedError, match="status 4"):
        engine(mock_s3, source).run()
    assert incomplete_uploads(mock_s3, BUCKET) == []
    assert "Contents" not in mock_s3.list_objects_v2(Bucket=BUCKET)


class MeasuredStream:
    """A stream of ``total`` bytes that measures, independently of the engine, the part bytes alive at
    once: a part counts from the moment its read starts (its buffer is allocated at the full size)
    until the client's upload_part returned for it, whatever the engine thinks. With ``trace`` it
    also measures real memory (tracemalloc) per phase: from the first read of a size to the next size."""

    description = "measured stream"

    def __init__(self, total: int, *, trace: bool = False) -> None:
        self.remaining = total
        self.alive = 0
        self.peak = 0
        self.peak_while_reading: dict[int, int] = {}  # part size being read -> most bytes alive then
        self.traced_peak: dict[int, int] = {}  # part size being read -> most bytes allocated then
        self.in_flight: dict[int, int] = {}  # part size -> upload_part calls of that size now
        self.most_in_flight: dict[int, int] = {}  # part size -> most upload_part calls of that size at once
        self.sizes: list[int] = []
        self.trace = trace
        self._phase: int | None = None
        self._baseline = 0
        self._lock = threading.Lock()

    def read(self, size: int) -> bytes:
        if self.trace and size != self._phase:
            self.end_phase()
            self._phase = size
        with self._lock:
            self.alive += size
            self.peak = max(self.peak, self.alive)
            self.peak_while_reading[size] = max(self.peak_while_reading.get(size, 0), self.alive)
        n = min(size, self.remaining)
        self.remaining -= n
        with self._lock:
            self.alive -= size - n
        if n:
            self.sizes.append(n)
        return b"z" * n

    def start_tracing(self) -> None:
        tracemalloc.start()
        self._baseline = tracemalloc.get_traced_memory()[0]

    def end_phase(self) -> None:
        if self._phase is not None:
            self.traced_peak[self._phase] = tracemalloc.get_traced_memory()[1] - self._baseline
        tracemalloc.reset_peak()

    def finish(self) -> None:
        if self.trace:
            self.end_phase()
            tracemalloc.stop()

    def wrap(self, client) -> None:
        """Count a part as gone only once upload_part has returned (bytes in botocore's hands are alive)."""
        real = client.upload_part

        def upload_part(**kwargs):
            size = kwargs["ContentLength"]
            with self._lock:
                self.in_flight[size] = self.in_flight.get(size, 0) + 1
                self.most_in_flight[size] = max(self.most_in_flight.get(size, 0), self.in_flight[size])
            try:
                return real(**kwargs)
            finally:
                with self._lock:
                    self.in_flight[size] -= 1
                    self.alive -= size

        client.upload_part = upload_part


def scaled_engine(client, stream, *, key, max_buffer, parts_per_size, concurrency=8):
    return StreamUploadEngine(
        client,
        bucket=BUCKET,
        key=key,
        stream=stream,
        first_part_size=5 * MiB,
        parts_per_size=parts_per_size,
        options=UploadOptions(progress_interval=0, concurrency=concurrency, max_buffer_bytes=max_buffer),
    )


def test_parallelism_follows_the_part_size_within_max_buffer_bytes():
    options = UploadOptions(concurrency=8, max_buffer_bytes=1 * GiB)
    # A stream also holds the part being read: 16 MiB parts -> 8 in flight; 256 MiB -> 3 (+1 read).
    assert [options.workers_for(s, held_by_reader=1) for s in (16 * MiB, 128 * MiB, 256 * MiB)] == [8, 7, 3]
    assert options.workers_for(512 * MiB, held_by_reader=1) == 1  # 1 in flight + 1 being read = 1 GiB
    assert options.workers_for(5 * GiB, held_by_reader=1) == 1  # never 0: a part larger than the cap still goes


def test_a_long_stream_of_growing_parts_stays_within_max_buffer_bytes(s3):
    """Parts of 5, 10, 20, 40 MiB (= max_buffer_bytes) and 80 MiB (above it), 5 of each size, sent to
    moto's server in another process so that this process's memory is the client's alone. Had the
    parallelism stayed where the first size put it (7 parts), 40 MiB parts would hold 320 MiB.

    Measured three ways: the engine's peak_buffer_bytes, the bytes alive between read and upload_part's
    return, and tracemalloc's peak of everything this process allocated, per size being read.
    """
    bucket, key, max_buffer = "stream-memory", "scaled-long", 40 * MiB
    s3.create_bucket(Bucket=bucket)
    sizes = [5 * MiB, 10 * MiB, 20 * MiB, 40 * MiB, 80 * MiB]
    total = sum(5 * size for size in sizes) - 12345  # the last part is short
    stream = MeasuredStream(total, trace=True)
    stream.wrap(s3)
    engine = scaled_engine(s3, stream, key=key, max_buffer=max_buffer, parts_per_size=5)
    engine.bucket = bucket
    stream.start_tracing()
    try:
        result = engine.run()
    finally:
        tracemalloc.stop()
        s3.delete_object(Bucket=bucket, Key=key)
    assert result.size == total and result.parts == 25
    mib = {size // MiB: (stream.peak_while_reading[size] / MiB, stream.traced_peak[size] / MiB) for size in sizes}
    print(
        f"\nscaled stream of {total / MiB:.0f} MiB in {result.parts} parts, max_buffer_bytes {max_buffer // MiB} MiB: "
        f"peak part bytes reported by the engine {result.peak_buffer_bytes / MiB:.1f} MiB, measured "
        f"{stream.peak / MiB:.1f} MiB; per part size being read (MiB): (measured, tracemalloc) {mib}; "
        f"most parts in flight per size: { {k // MiB: v for k, v in sorted(stream.most_in_flight.items())} }"
    )
    slack = 2 * MiB  # botocore's request objects, logs, futures: less than any part, so one part too many shows
    for size in sizes:
        bound = max(max_buffer, size)  # while parts fit, max_buffer_bytes; a part above it is held alone
        assert stream.peak_while_reading[size] <= bound, size
        assert stream.traced_peak[size] <= bound + slack, size
    assert stream.peak <= result.peak_buffer_bytes <= 80 * MiB
    assert all(n * size <= max(max_buffer, size) for size, n in stream.most_in_flight.items())
    assert stream.most_in_flight[5 * MiB] >= 2  # parallelism was really used while parts were small
    assert incomplete_uploads(s3, bucket) == []


def test_stream_peak_never_exceeds_max_buffer_bytes_while_parts_fit_it(mock_s3):
    """The same growth stopped below max_buffer_bytes: then the bound is max_buffer_bytes itself,
    both as the engine reports it and as measured from outside."""
    max_buffer = 32 * MiB
    total = 4 * (5 + 10) * MiB + 2 * 20 * MiB
    stream = MeasuredStream(total)
    stream.wrap(mock_s3)
    result = scaled_engine(mock_s3, stream, key="scaled-fit", max_buffer=max_buffer, parts_per_size=4).run()
    assert result.parts == 10
    assert 0 < stream.peak <= result.peak_buffer_bytes <= max_buffer
    assert stream.most_in_flight[5 * MiB] >= 2


def test_memory_is_bounded_to_workers_plus_one_parts(mock_s3):
    stream = MeasuredStream(8 * 5 * MiB)
    stream.wrap(mock_s3)
    result = engine(mock_s3, stream).run()  # concurrency 2: 2 in flight + 1 being read
    assert stream.peak <= result.peak_buffer_bytes <= 3 * 5 * MiB
    assert max(stream.most_in_flight.values()) <= 2


def test_parts_per_size_scales_the_growth_down_for_tests_and_keeps_s3_limits():
    assert [stream_part_size(n, 5 * MiB, parts_per_size=2) // MiB for n in range(1, 8)] == [5, 5, 10, 10, 20, 20, 40]
    assert stream_part_size(10_000, 5 * MiB, parts_per_size=1) == MAX_PART_SIZE  # never above S3's 5 GiB
    assert stream_capacity(5 * MiB, parts_per_size=1) < MAX_OBJECT_SIZE
    with pytest.raises(InvalidUploadRequest, match="parts_per_size"):
        StreamUploadEngine(None, bucket=BUCKET, key="k", stream=CountingStream(), parts_per_size=0)


class CountingStream:
    description = "a stream nobody reads"

    def read(self, size: int) -> bytes:
        raise AssertionError("nothing may be read before the upload exists")

    def finish(self) -> None:
        pass


def test_recording_the_upload_id_fails_and_the_stream_upload_is_aborted(mock_s3):
    """Creation is inside the abort scope: an UploadId that cannot be recorded is not left behind."""
    seen = []

    def recording_fails(upload_id: str) -> None:
        seen.append(upload_id)
        raise RuntimeError("task_state_store: execution API answered 503")

    stream_engine = engine(mock_s3, CountingStream(), on_upload_started=recording_fails)
    with pytest.raises(RuntimeError, match="503"):
        stream_engine.run()
    assert len(seen) == 1  # it was created...
    assert incomplete_uploads(mock_s3, BUCKET) == []  # ...and aborted


@pytest.mark.parametrize(
    ("first_part_size", "message"),
    [(5 * MiB - 1, "below S3's minimum"), (MAX_PART_SIZE + 1, "above S3's maximum"), (0, "below S3's minimum")],
)
def test_a_first_part_size_s3_refuses_is_refused_before_anything_is_read_or_created(first_part_size, message):
    """The same check as a file's plan (plan.check_part_size): one rule, one message, whatever the source."""
    with pytest.raises(InvalidUploadRequest, match=message):
        StreamUploadEngine(None, bucket=BUCKET, key="k", stream=CountingStream(), first_part_size=first_part_size)
