from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import time
import tracemalloc
from datetime import timedelta

import psutil
import pytest

from airflow_mpu_provider.multipart.errors import CommandFailedError, InvalidUploadRequest
from airflow_mpu_provider.multipart.sources.command import (
    STDERR_LINE_BYTES,
    STDERR_TAIL_BYTES,
    CommandSource,
    StderrTail,
    find_bash,
    timeout_seconds,
)


def test_reads_exact_sizes_until_the_output_ends():
    with CommandSource("printf 'abcdefghij'") as source:
        assert source.read(4) == b"abcd"
        assert source.read(4) == b"efgh"
        assert source.read(4) == b"ij"
        assert source.read(4) == b""
        source.finish()


def test_pipefail_catches_a_failure_early_in_the_pipeline():
    with CommandSource("echo 'pg_dump: connection refused' >&2; exit 2 | cat") as source:
        source.read(10)
        with pytest.raises(CommandFailedError, match=r"(?s)exited with status 2.*connection refused"):
            source.finish()


def test_timeout_kills_the_whole_pipeline():
    started = time.monotonic()
    with CommandSource("sleep 30 | cat", timeout=0.5) as source:
        assert source.read(10) == b""
        with pytest.raises(CommandFailedError, match="timed out after 0.5 s"):
            source.finish()
    assert time.monotonic() - started < 10


def test_a_signal_is_reported():
    with CommandSource("kill -TERM $$") as source:
        source.read(1)
        with pytest.raises(CommandFailedError, match="killed by SIGTERM"):
            source.finish()


def test_empty_command_is_refused():
    with pytest.raises(InvalidUploadRequest, match="command is empty"):
        CommandSource("  ")


# -- pipefail needs bash ---------------------------------------------------------------------------


def test_no_bash_on_path_is_a_clear_error_before_anything_starts(tmp_path, monkeypatch):
    only_sh = tmp_path / "bin"
    only_sh.mkdir()
    (only_sh / "sh").symlink_to("/bin/sh")  # sh is there, bash is not: no silent fallback without pipefail
    monkeypatch.setenv("PATH", str(only_sh))
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a))
    with pytest.raises(InvalidUploadRequest, match=r"bash was not found on PATH.*pipefail"):
        CommandSource("exit 3 | cat")
    with pytest.raises(InvalidUploadRequest, match="bash was not found"):
        find_bash()
    assert started == []


def test_an_explicit_env_is_searched_for_bash(tmp_path):
    with pytest.raises(InvalidUploadRequest, match="bash was not found"):
        CommandSource("true", env={"PATH": str(tmp_path)})


# -- command_timeout -------------------------------------------------------------------------------


def test_timedelta_timeout_kills_a_3_s_command():
    with CommandSource("sleep 3; printf finished", timeout=timedelta(seconds=1)) as source:
        assert source.read(100) == b""  # killed before it could print
        with pytest.raises(CommandFailedError, match="timed out after 1 s and was killed"):
            source.finish()
        assert source.process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("timeout", ["6h", 0, -1, float("nan"), float("inf"), True, [3]])
def test_timeout_of_the_wrong_type_or_value_is_refused_before_anything_starts(timeout, monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("started a process"))
    with pytest.raises(InvalidUploadRequest, match="command_timeout must"):
        CommandSource("true", timeout=timeout)


def test_timeout_values_in_seconds():
    assert timeout_seconds(None) is None
    assert timeout_seconds(2) == 2.0 and timeout_seconds(0.25) == 0.25
    assert timeout_seconds(timedelta(hours=6)) == 21600.0


def test_a_timeout_firing_after_a_clean_exit_is_not_a_failure(monkeypatch):
    """The race, forced: the timer fires after the command exited but before finish() has seen it
    (where the old code had wait() return and then the timer fire before its cancel)."""
    source = CommandSource("printf ok", timeout=3600)
    real_await = source._await_exit

    def exit_then_timer_fires() -> None:
        real_await()  # the command has exited (status 0), not yet reaped
        source._on_timeout()  # ...and the timer fires right now, before finish() takes the lock

    monkeypatch.setattr(source, "_await_exit", exit_then_timer_fires)
    with source:
        assert source.read(10) == b"ok"
        source.finish()  # no "timed out": it exited 0 on its own
    assert source._timed_out  # the timer really fired inside the window
    assert source.process.returncode == 0


#: bash exits 0 at once while a process of its group keeps writing: the timeout kills the writer mid-output.
BACKGROUND_WRITER = "(head -c 300000 /dev/zero; sleep 30; head -c 300000 /dev/zero) & exit 0"


def test_output_cut_short_by_the_timeout_fails_even_though_bash_exited_0():
    """Issue #20: the exit status was read before the timeout flag, so the truncated output passed."""
    with CommandSource(BACKGROUND_WRITER, timeout=1) as source:
        data = source.read(5 * 1024 * 1024)  # blocks until the timeout kills the writer: EOF
        assert len(data) == 300_000
        with pytest.raises(CommandFailedError, match=r"timed out after 1 s and was killed; its output was cut short"):
            source.finish()
    assert source.process.returncode == 0  # bash itself did exit 0: the status alone would have said success


def test_a_timer_firing_once_finish_has_seen_the_exit_kills_nothing():
    source = CommandSource("printf ok", timeout=3600)
    with source:
        source.read(10)
        source.finish()
        source._on_timeout()  # a late timer: must not signal a reaped (possibly reused) pid
    assert source._timed_out is False and source.process.returncode == 0


# -- stderr: a bounded tail, bounded lines ---------------------------------------------------------


def test_stderr_tail_is_bounded_in_bytes_and_lines_are_logged_bounded(caplog):
    noise = "import os,sys\nfor i in range(3000): sys.stderr.write(f'progress {i}%\\r')\n"
    noise += "sys.stderr.buffer.write(os.urandom(300000))\nsys.stderr.write('\\nfatal: out of disk\\n'); sys.exit(5)\n"
    caplog.set_level(logging.INFO)
    with CommandSource(f"{sys.executable} -c {shlex.quote(noise)}") as source:
        source.read(1)
        with pytest.raises(CommandFailedError) as failed:
            source.finish()
        assert len(source._stderr._tail) <= STDERR_TAIL_BYTES
    message = str(failed.value)
    assert "exited with status 5" in message and message.rstrip().endswith("fatal: out of disk")
    tail = message.split("The end of its stderr:\n", 1)[1]
    assert tail.startswith("[...]\n") and len(tail) <= STDERR_TAIL_BYTES + len("[...]\n")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("command stderr: ")]
    assert "command stderr: progress 2999%" in lines  # \r ends a line: progress output is readable
    assert max(len(line.encode()) for line in lines) <= len("command stderr: ") + 4 * STDERR_LINE_BYTES + 10


def test_stderr_tail_keeps_memory_flat_for_a_line_that_never_ends(caplog):
    tail = StderrTail(logging.getLogger("t"))
    for _ in range(1000):
        tail.feed(b"x" * 65536)  # 64 MiB without a line end
        assert len(tail._line) <= STDERR_LINE_BYTES and len(tail._tail) <= STDERR_TAIL_BYTES
    tail.feed(b"\nlast line\n")
    assert tail.text().endswith("last line")


# -- reading: one buffer per part ------------------------------------------------------------------


def test_read_allocates_one_buffer_per_part_not_a_copy():
    with CommandSource("head -c 48000000 /dev/zero") as source:
        tracemalloc.start()
        try:
            part = source.read(40_000_000)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert len(part) == 40_000_000
        assert peak < 40_000_000 + 1_000_000  # a copy would show as 80 MB
        del part
        assert len(source.read(40_000_000)) == 8_000_000
        source.finish()


# -- the command dies with the process that started it --------------------------------------------

HOLDER = """
import sys, time
from airflow_mpu_provider.multipart.sources.command import CommandSource
source = CommandSource("sleep 1000 | sleep 1001 | cat; echo never")
print(source.process.pid, source.watchdog.pid, flush=True)
time.sleep(1000)
"""


def _pipeline(pgid: int) -> list[psutil.Process]:
    alive = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    return alive


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_whole_pipeline_dies_when_its_task_process_is_sigkilled():
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, env=dict(os.environ))
    try:
        line = holder.stdout.readline().split()
        pgid, watchdog = int(line[0]), int(line[1])
        deadline = time.monotonic() + 30
        while len(_pipeline(pgid)) < 4:  # bash, sleep, sleep, cat
            assert time.monotonic() < deadline, _pipeline(pgid)
            time.sleep(0.1)
        holder.kill()  # SIGKILL: nothing in the task process runs, no finally, no on_kill
        holder.wait()
        deadline = time.monotonic() + 30
        while _pipeline(pgid) or _running(watchdog):
            assert time.monotonic() < deadline, f"still running after its task died: {_pipeline(pgid)}"
            time.sleep(0.1)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_finished_command_dismisses_its_watchdog_without_killing():
    with CommandSource("printf done") as source:
        assert source.read(10) == b"done"
        source.finish()
    assert source.watchdog.returncode == 0  # it exited on the "done" byte, it did not kill anything
