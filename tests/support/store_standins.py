"""Stand-ins for S3-compatible stores that answer differently from moto, for ``S3Proxy.store``.

Each rewrites moto's answers (and refuses requests) the way the store it stands for does, as observed on
that store; the bytes still go to moto, so what is stored is real.
"""

from __future__ import annotations

import re
import threading

_CHECKSUM_ELEMENT = re.compile(rb"<Checksum(CRC32C|CRC32|CRC64NVME|SHA1|SHA256|Type|Algorithm)>.*?</Checksum\1>", re.S)


class ChecksumlessStore:
    """A store without S3 checksums whose CompleteMultipartUpload schema allows only PartNumber and ETag, as
    OpenStack Swift's s3api (2.30): UploadPart echoes no checksum, CreateMultipartUpload's, ListParts' and
    HeadObject's answers name none, and a Complete whose XML carries any ``<Checksum...>`` element is
    answered 400 MalformedXML. (Checksum headers it is sent are ignored, as Swift ignores them.)

    ``echo=True`` makes the other kind: a store that echoes part checksums and names the algorithm (moto's
    answers pass unchanged), yet refuses them in Complete's XML all the same. ``requires_checksums=True``
    turns the refusal around: a store that shows no checksum but wants each part's back at Complete, as
    AWS words it (400 InvalidRequest "... must include the checksum for each part").
    """

    def __init__(self, *, echo: bool = False, requires_checksums: bool = False) -> None:
        self.echo = echo
        self.requires_checksums = requires_checksums
        self.refused = 0
        self._lock = threading.Lock()

    def refuse(self, kind: str, body: bytes) -> tuple[int, str, str] | None:
        if kind != "CompleteMultipartUpload" or (b"<Checksum" in body) is self.requires_checksums:
            return None
        if self.requires_checksums:
            with self._lock:
                self.refused += 1
            return (
                400,
                "InvalidRequest",
                "The upload was created using a crc32c checksum. The complete request must include the checksum "
                "for each part. It was missing for part 1 in the request.",
            )
        with self._lock:
            self.refused += 1
        return (
            400,
            "MalformedXML",
            "The XML you provided was not well-formed or did not validate against our published schema",
        )

    def request_body(self, kind: str, body: bytes) -> bytes:
        return body

    def real_etag_header(self, value: str) -> str:
        return value

    def response_headers(
        self, kind: str, headers: list[tuple[str, str]], request_headers: dict[str, str]
    ) -> list[tuple[str, str]]:
        if self.echo:
            return headers
        return [(k, v) for k, v in headers if not k.lower().startswith("x-amz-checksum")]

    def response_body(self, kind: str, body: bytes) -> bytes:
        return body if self.echo else _CHECKSUM_ELEMENT.sub(b"", body)
