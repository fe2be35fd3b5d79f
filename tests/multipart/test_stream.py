from __future__ import annotations

import hashlib

import pytest

from airflow_mpu_provider.multipart.command import CommandSource
from airflow_mpu_provider.multipart.engine import UploadOptions
from airflow_mpu_provider.multipart.errors import CommandFailedError
from airflow_mpu_provider.multipart.plan import (
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    GiB,
    MiB,
    TiB,
    stream_capacity,
    stream_part_size,
)
from airflow_mpu_provider.multipart.stream import StreamUploadEngine
from tests.conftest import incomplete_uploads

BUCKET = "test-bucket"
WRITE_50_MIB = 'python3 -c "import sys; sys.stdout.buffer.write(bytes(range(256)) * 204800)"'


def test_stream_parts_grow_every_thousand_parts_up_to_5_gib():
    assert stream_part_size(1) == stream_part_size(1000) == 16 * MiB
    assert stream_part_size(1001) == 32 * MiB
    assert stream_part_size(10_000) == MAX_PART_SIZE
    assert stream_part_size(5000, 8 * MiB, growing=False) == 8 * MiB


def test_stream_capacity():
    assert 12 * TiB < stream_capacity() < 13 * TiB  # vs. 156 GiB with fixed 16 MiB parts
    assert stream_capacity(16 * MiB, growing=False) == 10_000 * 16 * MiB
    assert stream_capacity(5 * GiB) == MAX_OBJECT_SIZE


def engine(client, stream, **kwargs):
    return StreamUploadEngine(
        client,
        bucket=BUCKET,
        key="stream",
        stream=stream,
        first_part_size=5 * MiB,
        options=UploadOptions(progress_interval=0, concurrency=2),
        **kwargs,
    )


def test_command_output_arrives_byte_identical(mock_s3):
    with CommandSource(WRITE_50_MIB) as source:
        result = engine(mock_s3, source).run()
    expected = bytes(range(256)) * 204800
    assert result.size == len(expected) and result.parts == 10
    body = mock_s3.get_object(Bucket=BUCKET, Key="stream")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest()


def test_empty_output_is_a_zero_byte_object(mock_s3):
    with CommandSource("true") as source:
        result = engine(mock_s3, source).run()
    assert result.size == 0 and result.parts == 1
    assert mock_s3.head_object(Bucket=BUCKET, Key="stream")["ContentLength"] == 0


def test_command_failing_half_way_leaves_nothing(mock_s3):
    command = "python3 -c \"import sys; sys.stdout.buffer.write(b'x' * 12_000_000); sys.exit(4)\""
    with CommandSource(command) as source, pytest.raises(CommandFailedError, match="status 4"):
        engine(mock_s3, source).run()
    assert incomplete_uploads(mock_s3, BUCKET) == []
    assert "Contents" not in mock_s3.list_objects_v2(Bucket=BUCKET)


class CountingStream:
    """A stream that records how far ahead of the uploads its reader got (memory bound check)."""

    description = "counting stream"

    def __init__(self, parts: int, part_size: int) -> None:
        self.remaining = parts * part_size
        self.reads = 0

    def read(self, size: int) -> bytes:
        n = min(size, self.remaining)
        self.remaining -= n
        self.reads += 1
        return b"z" * n

    def finish(self) -> None:
        pass


def test_memory_is_bounded_to_workers_plus_one_parts(mock_s3, monkeypatch):
    from airflow_mpu_provider.multipart.upload import MultipartUpload

    stream = CountingStream(parts=8, part_size=5 * MiB)
    in_memory = []
    real = MultipartUpload.put_part

    def observe(self, number, data, *args, **kwargs):
        in_memory.append(stream.reads - number)  # parts read but not yet sent, besides this one
        return real(self, number, data, *args, **kwargs)

    monkeypatch.setattr(MultipartUpload, "put_part", observe)
    engine(mock_s3, stream).run()
    assert max(in_memory) <= 2  # concurrency 2: at most workers + 1 parts held
