"""Where the bytes come from: a local file read by byte range.

Reads use ``os.pread`` on one descriptor, so parallel workers never share a file position and a
part is read from disk exactly once. The file's identity (inode, size, mtime) is recorded when it
is opened and checked while parts are sent, because an object built from a file that changed
mid-upload matches no version of that file.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from airflow_mpu_provider.multipart.errors import InvalidUploadRequest, SourceChangedError


@dataclass(frozen=True, slots=True)
class SourceFingerprint:
    """What identifies one version of a file: used for resume records and change detection."""

    size: int
    mtime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, st: os.stat_result) -> SourceFingerprint:
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino, device=st.st_dev)


class FileSource:
    """A regular file opened for ranged reads; use as a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise InvalidUploadRequest(f"file {str(self.path)!r} does not exist; check the `file` argument.") from None
        except OSError as e:
            raise InvalidUploadRequest(f"cannot stat file {str(self.path)!r}: {e.strerror}.") from None
        if stat.S_ISDIR(st.st_mode):
            raise InvalidUploadRequest(
                f"{str(self.path)!r} is a directory; `file` must name a single regular file "
                "(upload a directory as an archive, e.g. produced by tar)."
            )
        if not stat.S_ISREG(st.st_mode):
            raise InvalidUploadRequest(f"{str(self.path)!r} is not a regular file; `file` must name a regular file.")
        try:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except PermissionError:
            raise InvalidUploadRequest(
                f"file {str(self.path)!r} is not readable by this process (uid {os.getuid()}); fix its permissions."
            ) from None
        except OSError as e:
            raise InvalidUploadRequest(f"cannot open file {str(self.path)!r}: {e.strerror}.") from None
        self.fingerprint = SourceFingerprint.of(os.fstat(self._fd))
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    @property
    def size(self) -> int:
        return self.fingerprint.size

    @property
    def description(self) -> str:
        return str(self.path)

    def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset``; a short read means the file shrank under us."""
        data = os.pread(self._fd, length, offset)
        if len(data) == length:
            return data
        chunks = [data]
        got = len(data)
        while got < length:
            more = os.pread(self._fd, length - got, offset + got)
            if not more:
                raise SourceChangedError(
                    f"{self.path} ended at byte {offset + got:,} while reading bytes {offset:,}..{offset + length:,}: "
                    f"it was {self.size:,} bytes when the upload started. Do not modify the file while it uploads."
                )
            chunks.append(more)
            got += len(more)
        return b"".join(chunks)

    def check_unchanged(self) -> None:
        """Raise SourceChangedError if the file was modified, truncated, appended to, replaced or deleted."""
        try:
            now = SourceFingerprint.of(os.stat(self.path))
        except FileNotFoundError:
            raise SourceChangedError(f"{self.path} was deleted during the upload.") from None
        opened = SourceFingerprint.of(os.fstat(self._fd))
        if (now.inode, now.device) != (self.fingerprint.inode, self.fingerprint.device):
            raise SourceChangedError(f"{self.path} was replaced by another file during the upload.")
        if opened != self.fingerprint:
            raise SourceChangedError(
                f"{self.path} changed during the upload (size {self.fingerprint.size:,} -> {opened.size:,} bytes, "
                f"mtime_ns {self.fingerprint.mtime_ns} -> {opened.mtime_ns}). "
                "Write the file completely before the upload task starts."
            )

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
