"""Streams of unknown size that are not a command: a readable object, or an iterable of bytes.

``StreamUploadEngine`` reads a ``Stream``: ``read(size)`` gives exactly ``size`` bytes until the end,
``finish()`` raises if the producer failed. A file object, a socket's ``makefile()``, a response
body or a generator of chunks does not keep the first promise (a read may return less, a chunk has
its own size), so these adapters fill each part from as many reads as it takes. No Airflow here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from airflow_mpu_provider.multipart.errors import InvalidUploadRequest


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class ReadableStream:
    """A ``Stream`` over any object with ``read(n)`` (files, pipes, HTTP bodies), looping over short reads."""

    def __init__(self, readable: Readable, description: str | None = None) -> None:
        self.readable = readable
        self.description = description or f"the stream {type(readable).__name__}"

    def read(self, size: int) -> bytes:
        first = self.readable.read(size)
        if not isinstance(first, bytes | bytearray | memoryview):
            raise InvalidUploadRequest(
                f"{self.description} returned {type(first).__name__}, not bytes; open it in binary mode."
            )
        if len(first) == size or not first:
            return bytes(first)
        buffer = bytearray(first)  # a short read: keep reading until the part is full or the stream ends
        while len(buffer) < size and (chunk := self.readable.read(size - len(buffer))):
            buffer += chunk
        return bytes(buffer)

    def finish(self) -> None:
        """A readable has no exit status: reaching its end is success."""


class IterableStream:
    """A ``Stream`` over an iterable of ``bytes`` chunks of any size (a generator, a list)."""

    def __init__(self, chunks: Iterable[bytes], description: str | None = None) -> None:
        self._chunks: Iterator[Any] = iter(chunks)
        self._left = memoryview(b"")
        self.description = description or "the iterable of bytes"

    def read(self, size: int) -> bytes:
        buffer = bytearray()
        while len(buffer) < size:
            if not self._left:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                if not isinstance(chunk, bytes | bytearray | memoryview):
                    raise InvalidUploadRequest(
                        f"{self.description} yielded {type(chunk).__name__}, not bytes; encode text first."
                    )
                self._left = memoryview(chunk)
            take = self._left[: size - len(buffer)]
            buffer += take
            self._left = self._left[len(take) :]
        return bytes(buffer)

    def finish(self) -> None:
        """An iterator that ended without raising is a complete stream."""


def as_stream(source: Any, description: str | None = None) -> ReadableStream | IterableStream:
    """The ``Stream`` for ``source``: anything with ``read`` is read, any other iterable is iterated."""
    if isinstance(source, bytes | bytearray | str):
        raise InvalidUploadRequest(
            f"upload_stream takes a readable object or an iterable of bytes chunks, not {type(source).__name__}; "
            "wrap bytes in io.BytesIO."
        )
    if callable(getattr(source, "read", None)):
        return ReadableStream(source, description)
    if isinstance(source, Iterable):
        return IterableStream(source, description)
    raise InvalidUploadRequest(
        f"upload_stream takes a readable object or an iterable of bytes chunks, not {type(source).__name__}."
    )
