"""Checksums of parts and objects, and the checks that compare them with what S3 reports.

Two ways to prove a part arrived intact exist, and stores differ in which they support:

* an S3 checksum (CRC32C by default: hardware-fast through awscrt) sent with each part. S3
  verifies it on receipt, echoes it back, lists it in ListParts and folds it into a composite
  object checksum. Cheap, and the strongest end-to-end proof on AWS.
* the MD5 of the part (Content-MD5). Every S3-compatible store verifies it and reports it as the
  part's ETag; a non-KMS multipart ETag is md5(md5(part 1) + ... + md5(part N)) + "-N".

Under SSE-KMS, DSSE-KMS and SSE-C the ETag is *not* an MD5 (it still looks like 32 hex digits), so it
proves nothing and must not be compared. The operator's arguments do not always say so (a bucket's
default encryption is invisible to them); every S3 answer does, in ``ServerSideEncryption`` or
``SSECustomerAlgorithm``, and ``etag_is_md5`` reads that.

The hash functions are botocore's own checksum classes, so our values are exactly the ones botocore
would have computed.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore import httpchecksum
from botocore.compat import HAS_CRT

from airflow_mpu_provider.multipart.errors import InvalidUploadRequest

_CHECKSUM_CLASSES: dict[str, type[httpchecksum.BaseChecksum]] = {
    "CRC32": httpchecksum.CrtCrc32Checksum if HAS_CRT else httpchecksum.Crc32Checksum,
    "SHA1": httpchecksum.Sha1Checksum,
    "SHA256": httpchecksum.Sha256Checksum,
}
if HAS_CRT:
    _CHECKSUM_CLASSES["CRC32C"] = httpchecksum.CrtCrc32cChecksum
# CRC64NVME (S3's default for new objects; full-object only): botocore >= 1.36 with awscrt.
if HAS_CRT and hasattr(httpchecksum, "CrtCrc64NvmeChecksum"):
    _CHECKSUM_CLASSES["CRC64NVME"] = httpchecksum.CrtCrc64NvmeChecksum

#: Algorithms a part can carry (the object checksum's type, COMPOSITE or FULL_OBJECT: ``whole_file.py``).
SUPPORTED_CHECKSUM_ALGORITHMS = tuple(sorted(_CHECKSUM_CLASSES))
#: Every checksum this package can recompute from local bytes to compare with what S3 reports for an object.
_READABLE_CHECKSUM_CLASSES = dict(_CHECKSUM_CLASSES)
#: The default: CRC32C when awscrt is installed (it is a dependency), else zlib's CRC32.
DEFAULT_CHECKSUM_ALGORITHM = "CRC32C" if HAS_CRT else "CRC32"

_MD5_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')


def normalize_checksum_algorithm(algorithm: str | None) -> str | None:
    """Validate a user's checksum_algorithm; None (or "MD5", "none") means Content-MD5 only."""
    if algorithm is None or algorithm.upper() in ("MD5", "NONE", ""):
        return None
    name = algorithm.upper()
    if name not in _CHECKSUM_CLASSES:
        raise InvalidUploadRequest(
            f"checksum_algorithm={algorithm!r} is not supported; use one of "
            f"{', '.join(SUPPORTED_CHECKSUM_ALGORITHMS)}, or None for Content-MD5 only "
            "(for S3-compatible stores that reject S3 checksums)."
        )
    return name


def can_recompute(algorithm: str) -> bool:
    """Whether ``new_checksum(algorithm)`` works here (it depends on botocore and awscrt)."""
    return algorithm in _READABLE_CHECKSUM_CLASSES


def new_checksum(algorithm: str) -> httpchecksum.BaseChecksum:
    """A fresh botocore checksum object for ``algorithm`` (``update`` it, then ``b64digest``)."""
    return _READABLE_CHECKSUM_CLASSES[algorithm]()


def checksum_b64(algorithm: str, data: bytes | memoryview) -> str:
    """S3's base64 form of the checksum of ``data``."""
    checksum = new_checksum(algorithm)
    checksum.update(data)
    return checksum.b64digest()


def checksum_field(algorithm: str) -> str:
    """The request/response field that carries this algorithm's checksum, e.g. ChecksumCRC32C."""
    return f"Checksum{algorithm}"


@dataclass(frozen=True, slots=True)
class PartDigest:
    """What was computed locally for one part: its size, and whichever hashes were needed."""

    number: int
    size: int
    checksum: str | None = None
    md5: bytes | None = None

    @property
    def content_md5(self) -> str | None:
        return base64.b64encode(self.md5).decode() if self.md5 is not None else None


def digest_part(number: int, data: bytes | memoryview, *, algorithm: str | None, with_md5: bool) -> PartDigest:
    return PartDigest(
        number=number,
        size=len(data),
        checksum=checksum_b64(algorithm, data) if algorithm else None,
        md5=hashlib.md5(data, usedforsecurity=False).digest() if with_md5 else None,
    )


#: ServerSideEncryption values under which S3's ETags are not MD5s of the bytes.
NON_MD5_ETAG_ENCRYPTION = frozenset({"aws:kms", "aws:kms:dsse"})


def etag_is_md5(response: Mapping[str, Any]) -> bool:
    """Whether the ETags in this S3 answer (UploadPart, CreateMultipartUpload, HeadObject, ...) can be
    MD5s: False when the answer says the object is encrypted with KMS or a customer key (SSE-C)."""
    if str(response.get("ServerSideEncryption") or "").lower() in NON_MD5_ETAG_ENCRYPTION:
        return False
    return not response.get("SSECustomerAlgorithm")


def etag_is_md5_for_args(extra_args: Mapping[str, Any]) -> bool:
    """The same, decided from CreateMultipartUpload's arguments before S3 has answered anything."""
    return etag_is_md5(extra_args) and "SSECustomerKey" not in extra_args


def md5_from_etag(etag: str | None) -> bytes | None:
    """The MD5 inside a single-part ETag, or None if the ETag is not a plain MD5 (SSE-KMS, SSE-C, ...)."""
    match = _MD5_ETAG.match(etag or "")
    return bytes.fromhex(match.group(1)) if match else None


def multipart_etag(md5s: Iterable[bytes]) -> str:
    """The ETag S3 gives a multipart object (no SSE-KMS/SSE-C): md5 of the part md5s, dash, part count."""
    md5s = list(md5s)
    return f'"{hashlib.md5(b"".join(md5s), usedforsecurity=False).hexdigest()}-{len(md5s)}"'


def composite_checksum(algorithm: str, part_checksums: Iterable[str]) -> str:
    """S3's COMPOSITE object checksum: the checksum of the concatenated raw part checksums, dash, count."""
    raw = [base64.b64decode(c) for c in part_checksums]
    return f"{checksum_b64(algorithm, b''.join(raw))}-{len(raw)}"


def composite_matches(reported: str | None, expected: str | None) -> bool:
    """Is ``reported`` the COMPOSITE checksum ``expected`` ("value-N")? AWS reports "value-N"; stores that
    leave out "-N" (moto's HeadObject) are compared on the value."""
    if not reported or not expected:
        return False
    return reported == expected or ("-" not in reported and reported == expected.split("-")[0])


def part_matches(
    digest: PartDigest, stored: Mapping[str, Any], algorithm: str | None, *, etag_is_md5: bool = True
) -> bool | None:
    """Does a part S3 reports (UploadPart response or ListParts entry) hold the bytes of ``digest``?

    True or False when it can be decided; None when the store reported nothing comparable (no
    checksum, and an ETag that is not a plain MD5 or, ``etag_is_md5=False``, is known not to be one
    because the object is encrypted with KMS or SSE-C): such a part cannot be trusted for resume.
    """
    if "Size" in stored and stored["Size"] != digest.size:
        return False
    checked = False
    if algorithm and digest.checksum and stored.get(checksum_field(algorithm)):
        if stored[checksum_field(algorithm)] != digest.checksum:
            return False
        checked = True
    # The ETag too, wherever both are MD5s: an echoed checksum is the one the client sent, which a store
    # that does not check it echoes whatever it stored; the ETag is the store's own digest of the bytes.
    etag_md5 = md5_from_etag(stored.get("ETag")) if etag_is_md5 else None
    if etag_md5 is not None and digest.md5 is not None:
        if etag_md5 != digest.md5:
            return False
        checked = True
    return True if checked else None
