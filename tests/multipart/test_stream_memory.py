"""``upload_stream``'s memory, measured (tracemalloc), not taken from the engine's own counter.

Streams whose reads come short (pipes, sockets, HTTP bodies) or in chunks (generators) are read into
one buffer per part. They used to be collected in a growing ``bytearray`` and then copied into
``bytes``: a second copy of every part being read, which ``peak_buffer_bytes`` did not count (issue
#20: 40.5 MiB traced for a cap of 32 MiB). Here 96 MiB go through with a 32 MiB cap and 8 MiB parts to
a client that reads each part's body as a socket would and discards it, so the only part bytes alive
are the engine's. The client holds every part until the reader has read three parts further, so the
cap is really reached (three parts in flight and one being read), whatever the machine's speed.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_mpu_provider.multipart.options import UploadOptions
from airflow_mpu_provider.multipart.sources.stream import IterableStream, ReadableStream
from airflow_mpu_provider.multipart.stream_engine import StreamUploadEngine
from airflow_mpu_provider.multipart.units import KiB, MiB
from tests.support.in_process_s3 import in_process_client, traced_peak

CAP = 32 * MiB
PART = 8 * MiB
TOTAL = 96 * MiB
#: What may be traced beyond the part bytes: botocore's per-request objects, a read chunk, hashers.
ALLOWANCE = 3 * MiB
CHUNK = bytes(range(256)) * (64 * KiB // 256)  # what every short read or chunk carries (64 KiB)
#: In-flight parts are held back until the producer has handed out this many parts more.
HOLD_PARTS = 3


class Producer:
    """``TOTAL`` bytes in 64 KiB pieces, made from one shared chunk (nothing of it is allocated per
    read); counts what it handed out so that the client can hold parts until the reader is further."""

    def __init__(self) -> None:
        self.produced = 0
        self.changed = threading.Condition()

    def next_piece(self, limit: int) -> memoryview:
        n = min(limit, len(CHUNK), TOTAL - self.produced)
        with self.changed:
            self.produced += n
            self.changed.notify_all()
        return memoryview(CHUNK)[:n]

    def wait_until(self, produced: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.produced >= min(produced, TOTAL), timeout=120), "no progress"


class ShortReadsSocket(io.RawIOBase):
    """A socket-like readable: ``readinto`` fills at most 64 KiB."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        piece = self.producer.next_piece(len(buffer))
        memoryview(buffer).cast("B")[: len(piece)] = piece
        return len(piece)


class ShortReadsOnly:
    """A readable with ``read`` only (no ``readinto``), returning at most 64 KiB a call."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer

    def read(self, size: int = -1) -> bytes:
        return bytes(self.producer.next_piece(size if size >= 0 else TOTAL))


def chunks(producer: Producer) -> Iterator[bytes]:
    while piece := producer.next_piece(len(CHUNK)):
        yield bytes(piece)


@pytest.mark.parametrize("kind", ["readinto", "read-only", "iterable"])
def test_peak_traced_memory_stays_within_max_buffer_bytes_and_peak_buffer_bytes_says_so(kind):
    producer = Producer()
    source = {
        "readinto": lambda: ReadableStream(ShortReadsSocket(producer)),
        "read-only": lambda: ReadableStream(ShortReadsOnly(producer)),  # type: ignore[arg-type]
        "iterable": lambda: IterableStream(chunks(producer)),
    }[kind]()
    # each part is held until the reader has read HOLD_PARTS parts further on
    client, _ = in_process_client(TOTAL, lambda number: producer.wait_until((number + HOLD_PARTS) * PART))
    engine = StreamUploadEngine(
        client,
        bucket="b",
        key="k",
        stream=source,
        first_part_size=PART,
        growing=False,
        options=UploadOptions(max_buffer_bytes=CAP, checksum_algorithm=None, progress_interval=3600),
    )
    result, peak = traced_peak(engine.run)
    assert result.size == TOTAL and result.parts == TOTAL // PART
    assert result.peak_buffer_bytes == CAP  # three parts in flight and the fourth being read: the cap, reached
    # What was really allocated at the peak: the part bytes the result reports, plus small change.
    assert peak <= result.peak_buffer_bytes + ALLOWANCE, f"{peak / MiB:.1f} MiB traced for a cap of {CAP / MiB:.0f}"
