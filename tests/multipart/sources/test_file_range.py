"""A file's part read on demand: the same bytes and digests as the part in memory, rewindable, metered."""

from __future__ import annotations

import io
import os
import threading

import pytest

from airflow_mpu_provider.multipart.bandwidth import BandwidthLimit
from airflow_mpu_provider.multipart.checksums.digests import digest_part
from airflow_mpu_provider.multipart.errors import SourceChangedError, UploadCancelledError
from airflow_mpu_provider.multipart.sources.file import FileSource
from airflow_mpu_provider.multipart.sources.file_range import RANGE_CHUNK, FileRange, part_body
from airflow_mpu_provider.multipart.units import MiB

OFFSET, LENGTH = 3 * MiB + 7, 5 * MiB + 11


class Meter:
    def __init__(self) -> None:
        self.new = self.resent = 0

    def sent(self, new: int, resent: int) -> None:
        self.new += new
        self.resent += resent


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(os.urandom(10 * MiB))
    with FileSource(path) as opened:
        yield opened, path.read_bytes()[OFFSET : OFFSET + LENGTH]


@pytest.mark.parametrize("algorithm", [None, "CRC32", "CRC32C", "SHA256"])
def test_digest_of_a_range_is_the_digest_of_its_bytes(source, algorithm):
    src, expected = source
    got = FileRange(src, OFFSET, LENGTH).digest(4, algorithm=algorithm, with_md5=True, chunk=MiB // 3)
    assert got == digest_part(4, expected, algorithm=algorithm, with_md5=True)


@pytest.mark.parametrize("throttled", [False, True])
def test_body_reads_a_chunk_at_a_time_and_rewinds_for_a_retry(source, throttled):
    src, expected = source
    meter = Meter()
    limit = BandwidthLimit(1 << 40) if throttled else None
    body = part_body(FileRange(src, OFFSET, LENGTH), threading.Event(), meter, limit)
    assert len(body) == LENGTH and body.seekable() and body.tell() == 0
    for _attempt in range(2):  # botocore rewinds the body to retry the request
        body.seek(0)
        pieces = []
        while piece := body.read(64 * MiB):  # however much is asked, at most one chunk is read
            assert len(piece) <= RANGE_CHUNK
            pieces.append(bytes(piece))
        assert b"".join(pieces) == expected and body.tell() == LENGTH
    assert (meter.new, meter.resent) == (LENGTH, LENGTH)
    body.seek(0)  # a signer hashing through readinto is not metered
    buffer = bytearray(LENGTH)
    assert body.readinto(buffer) == LENGTH and bytes(buffer) == expected
    assert body.seek(-5, io.SEEK_END) == LENGTH - 5 and body.read() == expected[-5:]
    assert FileRange(src, OFFSET, LENGTH)[2] == expected[2] and FileRange(src, OFFSET, LENGTH)[-1] == expected[-1]


def test_a_cancelled_body_stops_and_a_shrunk_file_is_noticed(source, tmp_path):
    src, _ = source
    cancel = threading.Event()
    body = part_body(FileRange(src, OFFSET, LENGTH), cancel)
    body.read(1)
    cancel.set()
    with pytest.raises(UploadCancelledError):
        body.read(1)
    os.truncate(src.path, OFFSET + 10)
    with pytest.raises(SourceChangedError):
        part_body(FileRange(src, OFFSET, LENGTH)).read(-1)
