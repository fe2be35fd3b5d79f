"""A file's parts in flight, measured (tracemalloc): read from the file as the socket asks, never whole.

Issue #22: every part in flight used to be a buffer of its full size, so 64 parts of 8 MiB in flight cost
512 MiB. Here a 512 MiB sparse file goes out as 64 parts of 8 MiB, all 64 in flight at once (the client
holds every part until all 64 have been read to their end, so they really are in flight together,
whatever the machine's speed), through a real boto3 client whose UploadPart reads each body as a socket
would (``read(16 KiB)`` until the end, after botocore's own signing pass) and hashes it for its ETag.
What tracemalloc sees at the peak must be a few MiB per part at most, far below one part each.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

import pytest

from airflow_mpu_provider.multipart.file_engine import FileUploadEngine
from airflow_mpu_provider.multipart.options import UploadOptions
from airflow_mpu_provider.multipart.parts.plan import plan_parts
from airflow_mpu_provider.multipart.sources.file import FileSource
from airflow_mpu_provider.multipart.units import MiB
from tests.support.in_process_s3 import in_process_client, traced_peak

PART = 8 * MiB
PARTS = 64
TOTAL = PART * PARTS
#: 64 parts in flight may hold one 1 MiB chunk each (the engine's count), plus botocore's per-request
#: objects; holding the parts whole would be 512 MiB.
BOUND = 64 * MiB + 8 * MiB


def holding_client(parts_in_flight: int) -> tuple[Any, dict[int, bytes]]:
    """The in-process client, each part held (not its bytes: the request) until ``parts_in_flight`` parts
    have been read to their end."""
    read_through = threading.Condition()
    done = [0]

    def hold(_: int) -> None:
        with read_through:
            done[0] += 1
            read_through.notify_all()
            assert read_through.wait_for(lambda: done[0] >= parts_in_flight, timeout=300), (
                "parts not in flight together"
            )

    return in_process_client(TOTAL, hold)


@pytest.fixture
def big_file(tmp_path):
    path = tmp_path / "big"
    with open(path, "wb") as f:  # sparse but for a pattern at each part's start: reads cost no disk
        for n in range(PARTS):
            f.seek(n * PART)
            f.write(n.to_bytes(4, "big") * 1024)
        f.truncate(TOTAL)
    return path


def test_64_file_parts_in_flight_are_not_held_whole_in_memory(big_file):
    client, md5s = holding_client(PARTS)
    with FileSource(big_file) as source:
        engine = FileUploadEngine(
            client,
            bucket="b",
            key="k",
            source=source,
            plan=plan_parts(TOTAL, PART),
            options=UploadOptions(concurrency=PARTS, checksum_algorithm=None, progress_interval=3600),
        )
        result, peak = traced_peak(engine.run)
    assert result.size == TOTAL and result.parts == PARTS and len(md5s) == PARTS
    with open(big_file, "rb") as f:
        for n in range(1, PARTS + 1):
            assert md5s[n] == hashlib.md5(f.read(PART), usedforsecurity=False).digest(), f"part {n}"
    assert result.peak_buffer_bytes <= PARTS * MiB
    assert peak <= BOUND, f"{peak / MiB:.1f} MiB traced for {PARTS} parts of {PART // MiB} MiB in flight"
    assert os.path.getsize(big_file) == TOTAL
