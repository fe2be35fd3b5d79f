"""A part of a file as the socket asks for it: a byte range read on demand, never whole in memory.

A part in flight used to be its full size in memory (16 MiB by default, up to 5 GiB), which is what
capped the parts in flight at ``max_buffer_bytes // part_size``. A file can be read again at no cost
but a ``pread``, so a file's part is instead a ``FileRange`` (the idea of s3transfer's
``ReadFileChunk``): the headers' MD5 and checksum are computed in one pass through the range, a chunk
at a time, and the body then reads the range a chunk at a time as the HTTP layer asks for it. botocore
rewinds a body to retry it (``seek(0)``) and its signer may read it: both cost another ``pread`` of the
page cache, never a buffer of the part.

What one part in flight holds is then one chunk (``RANGE_CHUNK``) at a time, first for the digest pass
and then for each socket write; ``range_footprint`` is what the engine counts against
``max_buffer_bytes`` for it.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any, overload

from airflow_mpu_provider.multipart.bandwidth import BandwidthLimit, ThrottledPartBody
from airflow_mpu_provider.multipart.checksums.digests import PartDigest, new_checksum
from airflow_mpu_provider.multipart.parts.body import PartBody, SendMeter
from airflow_mpu_provider.multipart.sources.file import FileSource
from airflow_mpu_provider.multipart.units import MiB

#: Bytes read from the file at once, for the digest pass and for each socket write.
RANGE_CHUNK = 1 * MiB


def range_footprint(part_length: int) -> int:
    """Part bytes one file part in flight holds at a time: one chunk (or the whole part, if smaller)."""
    return min(part_length, RANGE_CHUNK)


class FileRange:
    """Bytes ``offset .. offset + length`` of ``source``, read when indexed: ``len``, ``[i]`` and ``[a:b]`` only.

    Slicing returns ``bytes`` read from the file (``FileSource.read``: a short read means the file shrank
    and raises ``SourceChangedError``), so a ``PartBody`` can use it in place of a memoryview.
    """

    __slots__ = ("length", "offset", "source")

    def __init__(self, source: FileSource, offset: int, length: int) -> None:
        self.source = source
        self.offset = offset
        self.length = length

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> bytes: ...
    def __getitem__(self, index: int | slice) -> int | bytes:
        if not isinstance(index, slice):  # one byte, as of bytes
            position = range(self.length)[index]
            return self.source.read(self.offset + position, 1)[0]
        start, stop, step = index.indices(self.length)
        if step != 1:
            raise ValueError("a FileRange is read by contiguous slices")
        if stop <= start:
            return b""
        return self.source.read(self.offset + start, stop - start)

    def digest(self, number: int, *, algorithm: str | None, with_md5: bool, chunk: int = RANGE_CHUNK) -> PartDigest:
        """What ``digest_part`` computes from the whole part, from one pass a ``chunk`` at a time."""
        checksum = new_checksum(algorithm) if algorithm else None
        md5 = hashlib.md5(usedforsecurity=False) if with_md5 else None
        for start in range(0, self.length, chunk):
            piece = self[start : start + chunk]
            if checksum is not None:
                checksum.update(piece)
            if md5 is not None:
                md5.update(piece)
            del piece
        if self.length == 0 and checksum is not None:
            checksum.update(b"")
        return PartDigest(
            number=number,
            size=self.length,
            checksum=checksum.b64digest() if checksum is not None else None,
            md5=md5.digest() if md5 is not None else None,
        )


class _ReadsARange:
    """Reads of a range body hand the socket at most ``RANGE_CHUNK`` at a time (a ``PartBody`` over
    memory hands out whatever is asked, as that costs no copy)."""

    _view: Any

    def _use_range(self, data: FileRange) -> None:
        self._view = data  # PartBody reads only len() and contiguous slices of it

    def read(self, size: int | None = -1) -> bytes | memoryview:
        if size is not None and size > RANGE_CHUNK:
            size = RANGE_CHUNK
        return super().read(size)  # type: ignore[misc]


class FileRangeBody(_ReadsARange, PartBody):
    """A ``PartBody`` over a ``FileRange``: seekable, metered, cancellable, read from the file on demand."""

    def __init__(self, data: FileRange, cancel: threading.Event | None = None, meter: SendMeter | None = None) -> None:
        super().__init__(b"", cancel, meter)
        self._use_range(data)


class ThrottledFileRangeBody(_ReadsARange, ThrottledPartBody):
    """A ``ThrottledPartBody`` (``max_bandwidth``) over a ``FileRange``."""

    def __init__(
        self,
        data: FileRange,
        cancel: threading.Event | None,
        limit: BandwidthLimit,
        meter: SendMeter | None = None,
    ) -> None:
        super().__init__(b"", cancel, limit, meter)
        self._use_range(data)


def part_body(
    data: bytes | bytearray | memoryview | FileRange,
    cancel: threading.Event | None = None,
    meter: SendMeter | None = None,
    throttle: BandwidthLimit | None = None,
) -> PartBody:
    """The body ``UploadPart`` sends for ``data``: over memory, or read from the file on demand."""
    if isinstance(data, FileRange):
        if throttle is None:
            return FileRangeBody(data, cancel, meter)
        return ThrottledFileRangeBody(data, cancel, throttle, meter)
    return PartBody(data, cancel, meter) if throttle is None else throttle.body(data, cancel, meter)
