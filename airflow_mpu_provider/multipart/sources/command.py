"""Where the bytes come from when there is no file: the standard output of a shell command.

``pg_dump mydb | zstd`` written to disk only to be uploaded costs twice the disk and twice the time;
reading its stdout directly costs neither. The command runs under ``bash -o pipefail`` so that a
failing ``pg_dump`` is not hidden by a succeeding ``zstd``; without bash there is no pipefail, so a
missing bash is an error, never a silent fallback to ``sh``. It runs in a process group of its own
so that a timeout or a kill reaches every process of the pipeline, and a watchdog process kills that
group if the process that started it dies, even by SIGKILL (when nothing in this process can run).
Its stderr is logged as it comes and its tail (bounded in bytes) is kept for the error message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from types import TracebackType
from typing import IO

from airflow_mpu_provider.multipart import validation
from airflow_mpu_provider.multipart.errors import CommandFailedError, InvalidUploadRequest

#: Bytes of the command's stderr kept for the error message when it fails (the tail).
STDERR_TAIL_BYTES = 4096
#: Longest stderr line logged whole; longer runs (binary noise, endless progress bars) are cut.
STDERR_LINE_BYTES = 1024

#: The watchdog: blocks on a pipe whose only writer is the process that started the command. EOF
#: without the "done" byte means that process died (SIGKILL, OOM): kill the command's process group.
_WATCHDOG = """\
import os, signal, sys
pgid, fd = int(sys.argv[1]), int(sys.argv[2])
if os.read(fd, 1) == b"":
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
"""


def find_bash(path: str | None = None) -> str:
    """The bash to run commands with; InvalidUploadRequest if there is none on ``path`` (default: PATH).

    Checked before anything is started or created: without ``pipefail`` a pipeline whose first stage
    failed (``pg_dump ... | gzip``) exits 0, and a truncated dump would be completed as the object.
    """
    shell = shutil.which("bash", path=path)
    if shell is None:
        raise InvalidUploadRequest(
            "bash was not found on PATH; commands run under `bash -o pipefail` so that a failing first stage of a "
            "pipeline (e.g. pg_dump in `pg_dump ... | gzip`) fails the upload instead of completing a truncated "
            f"object. Install bash or add its directory to PATH (PATH is {path or os.environ.get('PATH', '')!r})."
        )
    return shell


def program_name(command: str) -> str:
    """The program a command starts (the first word's base name: ``pg_dump`` for ``/usr/bin/pg_dump -h db
    ... | gzip``): what lineage and log lines name, never the arguments, which may hold credentials."""
    for word in _words(command):
        if not _assignment(word):  # `PGPASSWORD=... pg_dump`: the program is pg_dump, the value is no name
            return os.path.basename(word.lstrip("({!")) or "command"  # `(pg_dump ...; ...) | gzip` too
    return "command"


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command, posix=True)
    except ValueError:  # unbalanced quotes: bash will say so; blank-separated words still name the program
        return command.split()


def _assignment(word: str) -> tuple[str, str] | None:
    """``(name, value)`` of a ``NAME=value`` or ``--name=value`` word, else None."""
    name, equals, value = word.partition("=")
    name = name.lstrip("-")
    return (name, value) if equals and name.replace("-", "_").isidentifier() else None


def command_label(command: str) -> str:
    """How messages name a command: its program, with ``...`` where the rest of it was left out."""
    program = program_name(command)
    return f"`{program}`" if command.strip() == program else f"`{program} ...`"


#: The password of a URL's user info: ``postgresql://app:PASSWORD@db/app``.
_URL_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*:([^\s/@]+)@")


def inline_values(command: str) -> tuple[list[str], list[tuple[str, str]]]:
    """What a command may carry in clear: the passwords of URLs in it, and its ``NAME=value`` and
    ``--name=value`` words as (name, value). Which names are secret is for the caller to judge (the
    operator asks Airflow's secrets masker, whose list of sensitive names the deployment configures)."""
    pairs = [pair for pair in map(_assignment, _words(command)) if pair is not None and pair[1]]
    return _URL_PASSWORD.findall(command), pairs


def timeout_seconds(timeout: float | timedelta | None) -> float | None:
    """``command_timeout`` in seconds: a number of seconds > 0 or a ``timedelta``; None means no timeout."""
    return None if timeout is None else validation.seconds("command_timeout", timeout, positive=True)


def _printable(raw: bytes) -> str:
    """Text for a log line or a message: undecodable bytes and control characters (binary noise on
    stderr, terminal escapes) become U+FFFD, so that they cannot garble the log."""
    return "".join(c if c.isprintable() or c in "\n\t" else "\ufffd" for c in raw.decode(errors="replace"))


class StderrTail:
    """A command's stderr: logged line by line (``\\n`` or ``\\r`` ends a line, each at most
    STDERR_LINE_BYTES) and its last STDERR_TAIL_BYTES kept. Memory is bounded whatever arrives."""

    def __init__(self, log: logging.Logger, tail_bytes: int = STDERR_TAIL_BYTES) -> None:
        self.log = log
        self.tail_bytes = tail_bytes
        self._tail = bytearray()
        self._truncated = False
        self._line = bytearray()
        self._dropping = False  # the current line was too long: its rest is dropped up to its end

    def feed(self, chunk: bytes) -> None:
        self._tail += chunk
        if len(self._tail) > self.tail_bytes:
            del self._tail[: len(self._tail) - self.tail_bytes]
            self._truncated = True
        pieces = chunk.replace(b"\r", b"\n").split(b"\n")
        for i, piece in enumerate(pieces):
            if not self._dropping:
                room = STDERR_LINE_BYTES - len(self._line)
                self._line += piece[:room]
                if len(piece) > room:
                    self._emit(cut=True)
                    self._dropping = True
            if i < len(pieces) - 1:  # a line ends after this piece
                if not self._dropping:
                    self._emit()
                self._dropping = False

    def close(self) -> None:
        self._emit()

    def _emit(self, cut: bool = False) -> None:
        line = _printable(bytes(self._line)).rstrip()
        self._line.clear()
        if line:
            self.log.info("command stderr: %s%s", line, " [...]" if cut else "")

    def text(self) -> str:
        """The kept tail, from a line start where possible, as text for an error message."""
        tail = bytes(self._tail).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._truncated and b"\n" in tail[:-1]:
            tail = tail[tail.index(b"\n") + 1 :]
        text = _printable(tail).strip("\n")
        return ("[...]\n" if self._truncated else "") + text


class CommandSource:
    """A running shell command whose stdout is read part by part; use as a context manager."""

    def __init__(
        self,
        command: str,
        *,
        timeout: float | timedelta | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        """Starts the command. ``timeout``: seconds (> 0) or a timedelta after which the whole
        pipeline is killed and ``finish`` raises. Everything is checked before anything starts."""
        if not command or not command.strip():
            raise InvalidUploadRequest("command is empty; give the shell command whose output to upload.")
        shell = find_bash(None if env is None else env.get("PATH", os.defpath))
        self.command = command
        #: Messages and log lines name the program only (the whole command may carry credentials).
        self.label = command_label(command)
        self.description = f"the output of {self.label}"
        self.timeout = timeout_seconds(timeout)
        self.log = log or logging.getLogger(__name__)
        self._stderr = StderrTail(self.log)
        self._timed_out = False
        #: The timer fired while the output was still open: whatever was read is cut short, so no
        #: exit status of bash (0 after `cmd & exit 0`) can make that a success.
        self._cut_short = False
        self._output_ended = False  # read() has seen EOF: the output was whole before any timer fired
        self._exited = False  # set once the command has exited (not yet reaped): no kill after that
        self._lock = threading.RLock()  # RLock: kill() may run in a signal handler on the main thread
        self.process = subprocess.Popen(
            [shell, "-o", "pipefail", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self._watchdog_pipe = -1
        try:
            self.watchdog = self._start_watchdog()
        except BaseException:
            self.kill()
            self.process.wait()
            raise
        assert self.process.stdout is not None and self.process.stderr is not None
        #: Buffered: ``read(n)`` fills one bytes object of n bytes, looping over the pipe until n or EOF.
        self.stdout: IO[bytes] = self.process.stdout
        self._stderr_reader = threading.Thread(target=self._read_stderr, name="mpu-command-stderr", daemon=True)
        self._stderr_reader.start()
        self._timer: threading.Timer | None = None
        if self.timeout is not None:
            self._timer = threading.Timer(self.timeout, self._on_timeout)
            self._timer.daemon = True
            self._timer.start()

    def _start_watchdog(self) -> subprocess.Popen[bytes]:
        """A process of its own session that kills the command's group when this process dies.

        A parent-death signal (PR_SET_PDEATHSIG) would reach bash only, not the rest of the pipeline;
        the watchdog kills the whole group. It holds the read end of a pipe whose write end only this
        process holds (not inheritable): the kernel closes it when this process dies, however it dies.
        """
        read_end, self._watchdog_pipe = os.pipe()
        try:
            return subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(self.process.pid), str(read_end)],
                pass_fds=(read_end,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # not killed with this process's group: it must outlive it
            )
        finally:
            os.close(read_end)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        fd = self.process.stderr.fileno()
        while chunk := os.read(fd, 65536):
            self._stderr.feed(chunk)
        self._stderr.close()

    def _on_timeout(self) -> None:
        with self._lock:
            if self._exited:
                return
            self._timed_out = True
            self._cut_short = not self._output_ended
            self.kill()

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes: exactly ``size`` unless the output ended. One buffer, no copy."""
        data = self.stdout.read(size)
        if len(data) < size:
            with self._lock:
                self._output_ended = True
        return data

    def kill(self) -> None:
        """Kill the whole pipeline (its process group), unless the command has already exited."""
        with self._lock:
            if self._exited:  # its pid may be reaped and reused: never signal it after that
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def _await_exit(self) -> None:
        """Block until the command has exited, leaving it unreaped (so its pid and group stay its own)."""
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOWAIT)

    def finish(self) -> None:
        """Wait for the command; raise CommandFailedError unless it exited 0 on its own, its output whole.

        Whatever the timeout killed before the output ended is a failure, whatever bash's status says:
        ``(writer; sleep 20; writer) & exit 0`` exits 0 at once, and the kill only ends its output early.
        A command whose output had ended and which exited 0 succeeded even if the timeout fired at the
        same moment: the timer and this method agree under a lock on which came first, so a clean exit
        is never reported as "timed out".
        """
        self._await_exit()
        with self._lock:
            self._exited = True
            if self._timer is not None:
                self._timer.cancel()
        returncode = self.process.wait()
        self._stderr_reader.join(5)
        tail = self._stderr.text()
        stderr = f"\nThe end of its stderr:\n{tail}" if tail else " (it wrote nothing to stderr)"
        if self._cut_short or (self._timed_out and returncode != 0):
            raise CommandFailedError(
                f"{self.label} timed out after {self.timeout:g} s and was killed; its output was cut short "
                f"and nothing is completed.{stderr}"
            )
        if returncode == 0:
            return
        if returncode < 0:
            name = signal.Signals(-returncode).name
            raise CommandFailedError(f"{self.label} was killed by {name}.{stderr}")
        raise CommandFailedError(f"{self.label} exited with status {returncode}.{stderr}")

    def close(self) -> None:
        """Kill what is left of the command (unless ``finish`` saw it exit), reap it, dismiss the watchdog."""
        self.kill()
        self._await_exit()
        with self._lock:
            self._exited = True
            if self._timer is not None:
                self._timer.cancel()
        self.process.wait()
        self._dismiss_watchdog()
        self.stdout.close()

    def _dismiss_watchdog(self) -> None:
        """Tell the watchdog the command is over (one byte, then EOF), so it exits without killing."""
        if self._watchdog_pipe < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._watchdog_pipe, b"x")
        os.close(self._watchdog_pipe)
        self._watchdog_pipe = -1
        self.watchdog.wait()

    def __enter__(self) -> CommandSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
