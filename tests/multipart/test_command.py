from __future__ import annotations

import time

import pytest

from airflow_mpu_provider.multipart.command import CommandSource
from airflow_mpu_provider.multipart.errors import CommandFailedError, InvalidUploadRequest


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
