"""Where the bytes come from when there is no file: the standard output of a shell command.

``pg_dump mydb | zstd`` written to disk only to be uploaded costs twice the disk and twice the time;
reading its stdout directly costs neither. The command runs under ``bash -o pipefail`` so that a
failing ``pg_dump`` is not hidden by a succeeding ``zstd``, in a process group of its own so that a
timeout or a kill reaches every process of the pipeline. Its stderr is kept (the tail) for the
error message and logged, since dump tools report there.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
from types import TracebackType
from typing import IO

from airflow_mpu_provider.multipart.errors import CommandFailedError, InvalidUploadRequest

#: Lines of the command's stderr quoted in the error when it fails.
STDERR_TAIL_LINES = 20


class CommandSource:
    """A running shell command whose stdout is read part by part; use as a context manager."""

    def __init__(
        self,
        command: str,
        *,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        if not command or not command.strip():
            raise InvalidUploadRequest("command is empty; give the shell command whose output to upload.")
        shell = shutil.which("bash")
        self.command = command
        self.description = f"the output of `{command}`"
        self.timeout = timeout
        self.log = log or logging.getLogger(__name__)
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._timed_out = threading.Event()
        self._killed = False
        argv = [shell, "-o", "pipefail", "-c", command] if shell else ["/bin/sh", "-c", command]
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
            bufsize=0,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self.stdout: IO[bytes] = self.process.stdout
        self._stderr_reader = threading.Thread(target=self._read_stderr, name="mpu-command-stderr", daemon=True)
        self._stderr_reader.start()
        self._timer: threading.Timer | None = None
        if timeout is not None:
            self._timer = threading.Timer(timeout, self._on_timeout)
            self._timer.daemon = True
            self._timer.start()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in iter(self.process.stderr.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            self._stderr_tail.append(line)
            self.log.info("command stderr: %s", line)

    def _on_timeout(self) -> None:
        self._timed_out.set()
        self.kill()

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes: exactly ``size`` unless the output ended."""
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            n = self.stdout.readinto(view[got:])
            if not n:
                break
            got += n
        del view
        return bytes(buffer) if got == size else bytes(buffer[:got])

    def kill(self) -> None:
        """Kill the whole pipeline (its process group)."""
        self._killed = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def finish(self) -> None:
        """Wait for the command; raise CommandFailedError unless it exited 0 on its own."""
        returncode = self.process.wait()
        if self._timer is not None:
            self._timer.cancel()
        self._stderr_reader.join(5)
        tail = "\n".join(self._stderr_tail)
        stderr = f"\nLast lines of its stderr:\n{tail}" if tail else " (it wrote nothing to stderr)"
        if self._timed_out.is_set():
            raise CommandFailedError(f"`{self.command}` timed out after {self.timeout:g} s and was killed.{stderr}")
        if returncode < 0:
            name = signal.Signals(-returncode).name
            raise CommandFailedError(f"`{self.command}` was killed by {name}.{stderr}")
        if returncode != 0:
            raise CommandFailedError(f"`{self.command}` exited with status {returncode}.{stderr}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
            self.process.wait()
        if self._timer is not None:
            self._timer.cancel()
        self.stdout.close()

    def __enter__(self) -> CommandSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
