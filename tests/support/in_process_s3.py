"""A real boto3 client whose S3 requests are answered in-process, and tracemalloc's view of a run.

For memory tests: what tracemalloc sees must be the engine's own buffers, so no server, proxy or moto
holds part bytes. Each UploadPart body is read as the HTTP layer reads it (``read(16 KiB)`` until the
end, after botocore's own signing pass), hashed for its ETag and dropped; ``on_part`` may then hold the
request (not its bytes) to keep parts in flight together.
"""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import boto3
from botocore.awsrequest import AWSResponse

from airflow_mpu_provider.multipart.units import KiB

T = TypeVar("T")
_ENDPOINT = "http://127.0.0.1:9"  # never reached: every request is answered before it is sent


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def _answer(status: int, headers: dict[str, str], body: bytes = b"") -> AWSResponse:
    return AWSResponse(_ENDPOINT, status, headers, _Raw(body))


def in_process_client(object_size: int, on_part: Callable[[int], None]) -> tuple[Any, dict[int, bytes]]:
    """The client, and the MD5 of every part it received (by part number, filled as parts arrive).

    ``on_part(number)`` runs after part ``number`` was read to its end and before it is answered.
    HeadObject reports ``object_size`` and the multipart ETag of the parts received."""
    client = boto3.client(
        "s3", endpoint_url=_ENDPOINT, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    md5s: dict[int, bytes] = {}

    def upload_part(request: Any, **_: Any) -> AWSResponse:
        number = int(request.url.split("partNumber=")[1].split("&")[0])
        digest = hashlib.md5(usedforsecurity=False)
        request.body.seek(0)
        while piece := request.body.read(16 * KiB):
            digest.update(piece)
        md5s[number] = digest.digest()
        on_part(number)
        return _answer(200, {"ETag": f'"{digest.hexdigest()}"'})

    def etag() -> str:
        joined = b"".join(md5s[n] for n in sorted(md5s))
        return f'"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(md5s)}"'

    created = b"<InitiateMultipartUploadResult><UploadId>u</UploadId></InitiateMultipartUploadResult>"
    events = client.meta.events
    events.register("before-send.s3.CreateMultipartUpload", lambda **_: _answer(200, {}, created))
    events.register("before-send.s3.UploadPart", upload_part)
    events.register(
        "before-send.s3.CompleteMultipartUpload",
        lambda **_: _answer(
            200, {}, f"<CompleteMultipartUploadResult><ETag>{etag()}</ETag></CompleteMultipartUploadResult>".encode()
        ),
    )
    events.register(
        "before-send.s3.HeadObject", lambda **_: _answer(200, {"Content-Length": str(object_size), "ETag": etag()})
    )
    events.register("before-send.s3.AbortMultipartUpload", lambda **_: _answer(204, {}))
    return client, md5s


def traced_peak(run: Callable[[], T]) -> tuple[T, int]:
    """``run()``'s result and the most memory tracemalloc saw allocated during it, above what was before."""
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        result = run()
        return result, tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
