"""Streams of unknown size that are not a command: a readable object, or an iterable of bytes.

``StreamUploadEngine`` reads a ``Stream``: ``read(size)`` gives exactly ``size`` bytes until the end,
``finish()`` raises if the producer failed. A file object, a socket's ``makefile()``, a response
body or a generator of chunks does not keep the first promise (a read may return less, a chunk has
its own size), so these adapters fill each part from as many reads as it takes. No Airflow here.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from airflow_mpu_provider.multipart.errors import InvalidUploadRequest

#: Largest read asked of a readable without ``readinto`` (each read is a transient copy beside the part).
READ_CHUNK = 1024 * 1024


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _not_bytes(description: str, got: object, verb: str, hint: str) -> InvalidUploadRequest:
    return InvalidUploadRequest(f"{description} {verb} {type(got).__name__}, not bytes; {hint}.")


class ReadableStream:
    """A ``Stream`` over any object with ``read(n)`` (files, pipes, HTTP bodies), looping over short reads.

    Each part is one buffer of the part's size, filled in place: through ``readinto`` where the object
    has it (files, sockets, urllib3 and http.client bodies), else by reads of at most ``READ_CHUNK``
    copied into it. A part that the end of the stream cut short is a view of its (full-size) buffer.
    """

    def __init__(self, readable: Readable, description: str | None = None) -> None:
        self.readable = readable
        self.description = description or f"the stream {type(readable).__name__}"
        self._readinto = getattr(readable, "readinto", None)

    def read(self, size: int) -> bytearray | memoryview:
        buffer = bytearray(size)
        with memoryview(buffer) as view:
            filled = self._fill(view)
            if self._readinto is None:
                filled = self._fill_by_reads(view, filled)
        return _part(buffer, filled)

    def _fill(self, view: memoryview) -> int:
        """Fill ``view`` through ``readinto`` up to its end or the stream's; falls back to ``read``
        for good if the object only pretends to have ``readinto`` (``io.RawIOBase`` without one)."""
        filled = 0
        while self._readinto is not None and filled < len(view):
            try:
                n = self._readinto(view[filled:])
            except (NotImplementedError, io.UnsupportedOperation):
                self._readinto = None
                return filled
            if n is None:  # not an end: a non-blocking object with nothing to give now
                raise InvalidUploadRequest(
                    f"{self.description} is non-blocking (readinto returned None); give a blocking one."
                )
            if not n:
                break
            filled += n
        return filled

    def _fill_by_reads(self, view: memoryview, filled: int) -> int:
        while filled < len(view):
            chunk = self.readable.read(min(len(view) - filled, READ_CHUNK))
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise _not_bytes(self.description, chunk, "returned", "open it in binary mode")
            if not chunk:
                break
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        return filled

    def finish(self) -> None:
        """A readable has no exit status: reaching its end is success."""


class IterableStream:
    """A ``Stream`` over an iterable of ``bytes`` chunks of any size (a generator, a list).

    Each part is one buffer of the part's size that the chunks are copied into. A chunk larger than
    what the part still needs is kept (the producer's memory, not a copy) until the next parts use it up.
    """

    def __init__(self, chunks: Iterable[bytes], description: str | None = None) -> None:
        self._chunks: Iterator[Any] = iter(chunks)
        self._left = memoryview(b"")
        self.description = description or "the iterable of bytes"

    def read(self, size: int) -> bytearray | memoryview:
        buffer = bytearray(size)
        filled = 0
        with memoryview(buffer) as view:
            while filled < size:
                if not self._left and not self._next_chunk():
                    break
                take = self._left[: size - filled]
                view[filled : filled + len(take)] = take
                filled += len(take)
                self._left = self._left[len(take) :]
        return _part(buffer, filled)

    def _next_chunk(self) -> bool:
        chunk = next(self._chunks, None)
        if chunk is None:
            self._left = memoryview(b"")
            return False
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise _not_bytes(self.description, chunk, "yielded", "encode text first")
        self._left = memoryview(chunk).cast("B")
        return True

    def finish(self) -> None:
        """An iterator that ended without raising is a complete stream."""


def _part(buffer: bytearray, filled: int) -> bytearray | memoryview:
    """The part read into ``buffer``: the buffer itself when full, else a view of what was filled (no
    copy: the buffer's memory stays held until the part is sent, and is counted so by the engine)."""
    return buffer if filled == len(buffer) else memoryview(buffer)[:filled]


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
