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
import tracemalloc
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from airflow_mpu_provider.multipart.engine import FileUploadEngine, UploadOptions
from airflow_mpu_provider.multipart.plan import plan_parts
from airflow_mpu_provider.multipart.sources import FileSource
from airflow_mpu_provider.multipart.units import KiB, MiB
from tests.multipart.test_stream_memory import _Raw

PART = 8 * MiB
PARTS = 64
TOTAL = PART * PARTS
#: 64 parts in flight may hold one 1 MiB chunk each (the engine's count), plus botocore's per-request
#: objects; holding the parts whole would be 512 MiB.
BOUND = 64 * MiB + 8 * MiB


def holding_client(parts_in_flight: int) -> tuple[Any, dict[int, bytes]]:
    """A real boto3 client answered in-process; each UploadPart body is read to its end as a socket would,
    then held (not its bytes: the request) until ``parts_in_flight`` parts have been read."""
    client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",
    )
    md5s: dict[int, bytes] = {}
    read_through = threading.Condition()
    done = [0]

    def answer(status: int, headers: dict[str, str], body: bytes = b"") -> AWSResponse:
        return AWSResponse("http://127.0.0.1:9", status, headers, _Raw(body))

    def upload_part(request: Any, **_: Any) -> AWSResponse:
        number = int(request.url.split("partNumber=")[1].split("&")[0])
        digest = hashlib.md5(usedforsecurity=False)
        request.body.seek(0)
        while piece := request.body.read(16 * KiB):
            digest.update(piece)
        with read_through:
            md5s[number] = digest.digest()
            done[0] += 1
            read_through.notify_all()
            assert read_through.wait_for(lambda: done[0] >= parts_in_flight, timeout=300), (
                "parts not in flight together"
            )
        return answer(200, {"ETag": f'"{digest.hexdigest()}"'})

    def etag() -> str:
        joined = b"".join(md5s[n] for n in sorted(md5s))
        return f'"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(md5s)}"'

    events = client.meta.events
    events.register(
        "before-send.s3.CreateMultipartUpload",
        lambda **_: answer(
            200, {}, b"<InitiateMultipartUploadResult><UploadId>u</UploadId></InitiateMultipartUploadResult>"
        ),
    )
    events.register("before-send.s3.UploadPart", upload_part)
    events.register(
        "before-send.s3.CompleteMultipartUpload",
        lambda **_: answer(
            200, {}, f"<CompleteMultipartUploadResult><ETag>{etag()}</ETag></CompleteMultipartUploadResult>".encode()
        ),
    )
    events.register(
        "before-send.s3.HeadObject", lambda **_: answer(200, {"Content-Length": str(TOTAL), "ETag": etag()})
    )
    events.register("before-send.s3.AbortMultipartUpload", lambda **_: answer(204, {}))
    return client, md5s


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
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            result = engine.run()
            peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
    assert result.size == TOTAL and result.parts == PARTS and len(md5s) == PARTS
    with open(big_file, "rb") as f:
        for n in range(1, PARTS + 1):
            assert md5s[n] == hashlib.md5(f.read(PART), usedforsecurity=False).digest(), f"part {n}"
    assert result.peak_buffer_bytes <= PARTS * MiB
    assert peak <= BOUND, f"{peak / MiB:.1f} MiB traced for {PARTS} parts of {PART // MiB} MiB in flight"
    assert os.path.getsize(big_file) == TOTAL
