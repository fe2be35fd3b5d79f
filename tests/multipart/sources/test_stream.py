"""Readables and iterables as streams: every part filled whatever sizes the reads or chunks come in."""

from __future__ import annotations

import io

import pytest

from airflow_mpu_provider.multipart.errors import InvalidUploadRequest
from airflow_mpu_provider.multipart.sources.stream import IterableStream, ReadableStream, as_stream


class Trickle(io.RawIOBase):
    """A readable that answers every read with at most 3 bytes, as a pipe or a socket may."""

    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self.data.read(min(size, 3) if size >= 0 else 3)


def parts_of(stream, size: int) -> list[bytes]:
    parts = []
    while part := stream.read(size):
        parts.append(part)
        if len(part) < size:
            break
    return parts


def test_a_readable_with_short_reads_still_fills_every_part():
    data = bytes(range(256)) * 4
    assert parts_of(ReadableStream(Trickle(data)), 100) == [data[i : i + 100] for i in range(0, len(data), 100)]


@pytest.mark.parametrize("chunk", [1, 7, 100, 1000, 5000])
def test_chunks_of_any_size_are_cut_into_exact_parts(chunk):
    data = bytes(range(256)) * 10
    stream = IterableStream(data[i : i + chunk] for i in range(0, len(data), chunk))
    assert b"".join(parts_of(stream, 300)) == data
    assert all(len(p) == 300 for p in parts_of(IterableStream([data]), 300)[:-1])


def test_text_is_refused_with_what_to_do():
    with pytest.raises(InvalidUploadRequest, match="not bytes; open it in binary mode"):
        ReadableStream(io.StringIO("text")).read(10)
    with pytest.raises(InvalidUploadRequest, match="yielded str, not bytes"):
        IterableStream(["text"]).read(10)
    with pytest.raises(InvalidUploadRequest, match="wrap bytes in io.BytesIO"):
        as_stream(b"raw bytes")
    with pytest.raises(InvalidUploadRequest, match="not int"):
        as_stream(5)


def test_as_stream_picks_read_before_iteration():
    assert isinstance(as_stream(io.BytesIO(b"x")), ReadableStream)  # a file is iterable too, by lines
    assert isinstance(as_stream(iter([b"x"])), IterableStream)


class NonBlocking(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> None:
        return None  # "nothing now", which must not be taken for the end of the stream


def test_a_non_blocking_readable_is_refused_rather_than_taken_as_ended():
    with pytest.raises(InvalidUploadRequest, match="non-blocking"):
        ReadableStream(NonBlocking()).read(10)


def test_a_short_last_part_is_a_view_of_its_buffer_and_a_full_part_the_buffer_itself():
    stream = ReadableStream(io.BytesIO(b"x" * 250))
    first, last = stream.read(200), stream.read(200)
    assert isinstance(first, bytearray) and first == b"x" * 200
    assert isinstance(last, memoryview) and bytes(last) == b"x" * 50 and len(last.obj) == 200
