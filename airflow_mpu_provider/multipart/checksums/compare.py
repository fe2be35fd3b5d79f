"""Does the object at a key already hold exactly a local file's bytes? No Airflow here.

This is what makes retries idempotent: a try that was killed after CompleteMultipartUpload
succeeded, or a re-run of finished work, finds the object already there and must succeed without
sending anything, while an object with other bytes must never be taken for the file.

Nothing is downloaded. The object's size, and one fingerprint S3 keeps for it, are compared with
the same fingerprint recomputed from the local bytes:

* the strongest one first: a digest nobody can forge (an attacker can adjust four bytes of any file to
  give it a chosen CRC, not a chosen MD5 or SHA): a SHA-256/SHA-1 checksum read with
  ``HeadObject(ChecksumMode=ENABLED)``, else the ETag where it is an MD5 (a plain MD5 for a
  single-request object, ``md5(part md5s)-N`` for a multipart one; not under SSE-KMS or SSE-C);
* only where neither exists, a CRC checksum: COMPOSITE (the checksum of the part checksums, ``value-N``)
  or FULL_OBJECT (the CRC of the whole file, whatever the parts: this package's default). A CRC a
  store reports without saying which it is is compared as both. A match by CRC alone says so in its
  ``detail`` and has ``collision_resistant=False``: it detects accidents, not intent.

A multipart fingerprint depends on where the parts were cut. The first part's size comes from
``HeadObject(PartNumber=1)`` (or, where a store does not support that, from the caller's plan), and
every part but the last must have that size, as the file engine cuts them. An object whose layout
cannot be reproduced (e.g. a stream upload with growing parts), or that carries no comparable
fingerprint, *cannot be shown to match*: it is treated as different, never as equal.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from airflow_mpu_provider.multipart.checksums.digests import (
    can_recompute,
    composite_checksum,
    multipart_etag,
    new_checksum,
)
from airflow_mpu_provider.multipart.checksums.whole_file import FULL_OBJECT_ALGORITHMS, full_object_checksum
from airflow_mpu_provider.multipart.errors import S3UploadError, UploadCancelledError
from airflow_mpu_provider.multipart.units import MiB
from airflow_mpu_provider.multipart.upload import head_object

#: HeadObject answers for a key that holds no object (moto and AWS say 404; some stores NoSuchKey).
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
#: Said of a match that rests on a CRC alone (the store gave no MD5 ETag and no SHA checksum).
CRC_ONLY = " (a CRC only: the store gives no MD5 or SHA digest of the object, and a CRC detects accidents, not forgery)"
#: Checksums an attacker cannot forge; the CRCs (CRC32, CRC32C, CRC64NVME) can be matched by adjusting 4-8 bytes.
COLLISION_RESISTANT_ALGORITHMS = ("SHA256", "SHA1")
#: How much of the file is hashed per read: memory stays flat whatever the part size.
_READ = 8 * MiB


class Readable(Protocol):
    """What is compared: ``FileSource`` (size plus ranged reads)."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...


@dataclass(frozen=True)
class ObjectComparison:
    """The verdict on an existing object against local bytes."""

    exists: bool
    matches: bool
    #: How it was decided ("size and CRC32C composite checksum") or why it does not match.
    detail: str
    head: dict[str, Any] = field(default_factory=dict, repr=False)
    #: Whether the match rests on a digest an attacker cannot forge (MD5 ETag, SHA checksum); False: a CRC only.
    collision_resistant: bool = False


@dataclass(frozen=True)
class _Fingerprint:
    """One fingerprint S3 reports, and how to recompute it locally."""

    kind: str  # "composite", "full", "either" (a CRC that may be composite or full), "etag", "md5"
    algorithm: str | None
    expected: str
    parts: int


def compare_object(
    client: Any,
    bucket: str,
    key: str,
    source: Readable,
    *,
    extra_args: Mapping[str, Any] | None = None,
    part_size_hint: int | None = None,
    cancel: threading.Event | None = None,
) -> ObjectComparison:
    """Compare the object at ``bucket``/``key`` with ``source``; reads the file only if the sizes agree.

    ``extra_args``: the upload's arguments, whose per-request ones (SSE-C key, RequestPayer, ...) the
    HeadObject repeats. ``part_size_hint``: the part size to assume where the store cannot tell the object's own.
    ``cancel``: set it (from any thread) to stop reading the file; UploadCancelledError is raised.
    Raises S3UploadError for any HeadObject error other than "no such key" (a 403 included: the
    caller knows which permission is missing and what to say).
    """
    try:
        head = head_object(client, bucket, key, extra_args=extra_args, with_checksum=True)
    except S3UploadError as e:
        if e.code in NOT_FOUND_CODES:
            return ObjectComparison(exists=False, matches=False, detail="no object at the key")
        raise
    size = head.get("ContentLength")
    if size != source.size:
        return ObjectComparison(True, False, f"the object is {size:,} bytes, the file {source.size:,}", head)
    fingerprint = _fingerprint(head)
    if fingerprint is None:
        return ObjectComparison(
            True,
            False,
            "the object carries no checksum and its ETag is not an MD5 (SSE-KMS or SSE-C), so it cannot be "
            "compared with the file",
            head,
        )
    part_size = source.size
    if fingerprint.parts > 1:
        part_size = _first_part_size(client, bucket, key, extra_args, part_size_hint, source.size, fingerprint.parts)
        if part_size is None and fingerprint.kind == "either":
            # Parts of no one size (a stream's growing parts): only the whole-file reading can hold.
            fingerprint = _Fingerprint("full", fingerprint.algorithm, fingerprint.expected, 1)
            part_size = source.size
        elif part_size is None:
            return ObjectComparison(
                True,
                False,
                f"the object's {fingerprint.parts} parts are not of one size this file can be cut into, so it "
                "cannot be compared with the file",
                head,
            )
    if fingerprint.kind == "either":
        return _compare_either(source, fingerprint, part_size, cancel, head)
    actual = _recompute(source, fingerprint, part_size, cancel)
    described = _describe(fingerprint)
    if actual == fingerprint.expected:
        strong = _collision_resistant(fingerprint)
        return ObjectComparison(True, True, f"size and {described}{'' if strong else CRC_ONLY}", head, strong)
    return ObjectComparison(True, False, f"its {described} differs from the file's", head)


def _compare_either(
    source: Readable, fingerprint: _Fingerprint, part_size: int, cancel: threading.Event | None, head: dict[str, Any]
) -> ObjectComparison:
    """An unlabelled CRC of a multipart object: the file's composite or whole-file CRC, from one read."""
    assert fingerprint.algorithm is not None
    crcs = _part_checksums(source, fingerprint.algorithm, fingerprint.parts, part_size, cancel)
    sizes = [min(part_size, source.size - n * part_size) for n in range(fingerprint.parts)]
    whole = full_object_checksum(fingerprint.algorithm, list(zip(crcs, sizes, strict=True)))
    composite = composite_checksum(fingerprint.algorithm, crcs).split("-")[0]
    for value, kind in ((whole, "full"), (composite, "composite")):
        if value == fingerprint.expected:
            matched = _Fingerprint(kind, fingerprint.algorithm, value, 1 if kind == "full" else fingerprint.parts)
            return ObjectComparison(True, True, f"size and {_describe(matched)}{CRC_ONLY}", head)
    return ObjectComparison(
        True, False, f"its {fingerprint.algorithm} checksum differs from the file's (whole-file and composite)", head
    )


def _parts_from_etag(etag: str) -> int | None:
    _, dash, count = etag.strip('"').rpartition("-")
    return int(count) if dash and count.isdigit() else None


def _fingerprint(head: Mapping[str, Any]) -> _Fingerprint | None:
    """The most trustworthy fingerprint in a HeadObject answer that can be recomputed from local bytes.

    Collision-resistant digests first: a SHA checksum, then an MD5 ETag; a CRC only where neither is
    there (``_checksum_fingerprint``).
    """
    etag = str(head.get("ETag", "")).strip('"')
    etag_parts = _parts_from_etag(etag)
    parts = etag_parts or (int(head["PartsCount"]) if head.get("PartsCount") else None)
    strong = _checksum_fingerprint(head, parts, COLLISION_RESISTANT_ALGORITHMS)
    if strong is not None:
        return strong
    sse = str(head.get("ServerSideEncryption", ""))
    if not (sse.startswith("aws:kms") or head.get("SSECustomerAlgorithm")):
        if etag_parts is not None and len(etag.rpartition("-")[0]) == 32:
            return _Fingerprint("etag", None, f'"{etag}"', etag_parts)
        if len(etag) == 32:
            return _Fingerprint("md5", None, etag, 1)
    return _checksum_fingerprint(head, parts, ("CRC32C", "CRC32", "CRC64NVME"))


def _checksum_fingerprint(head: Mapping[str, Any], parts: int | None, algorithms: Sequence[str]) -> _Fingerprint | None:
    """The object's checksum of one of ``algorithms``, as a fingerprint.

    A checksum is taken as it is when S3 says what it is (``value-N``, or a ChecksumType); an
    unqualified CRC on a multipart object may be composite or whole-file, and is compared as either.
    """
    kind = str(head.get("ChecksumType") or "").upper()
    ambiguous: _Fingerprint | None = None
    for algorithm in algorithms:
        value = str(head.get(f"Checksum{algorithm}") or "")
        if not value or not can_recompute(algorithm):
            continue
        _, dash, count = value.rpartition("-")
        if dash and count.isdigit():
            return _Fingerprint("composite", algorithm, value, int(count))
        if kind == "FULL_OBJECT" or (kind != "COMPOSITE" and parts is None):
            return _Fingerprint("full", algorithm, value, 1)
        if parts is not None:
            candidate = _Fingerprint("composite", algorithm, f"{value}-{parts}", parts)
            if kind == "COMPOSITE":
                return candidate
            if algorithm in FULL_OBJECT_ALGORITHMS:  # a CRC may be either: both are tried
                candidate = _Fingerprint("either", algorithm, value, parts)
            ambiguous = ambiguous or candidate
    return ambiguous


def _collision_resistant(fingerprint: _Fingerprint) -> bool:
    return fingerprint.kind in ("etag", "md5") or fingerprint.algorithm in COLLISION_RESISTANT_ALGORITHMS


def _first_part_size(
    client: Any,
    bucket: str,
    key: str,
    extra_args: Mapping[str, Any] | None,
    hint: int | None,
    size: int,
    parts: int,
) -> int | None:
    """The size every part but the last has, if ``size`` cut at it gives exactly ``parts`` parts."""
    candidates: list[int] = []
    try:
        first = head_object(client, bucket, key, extra_args=extra_args, part_number=1).get("ContentLength")
        if isinstance(first, int) and first > 0:
            candidates.append(first)
    except S3UploadError:
        pass  # a store without HeadObject PartNumber: the plan's part size is the only guess
    if hint:
        candidates.append(hint)
    for part_size in candidates:
        if -(-size // part_size) == parts:
            return part_size
    return None


def _recompute(source: Readable, fingerprint: _Fingerprint, part_size: int, cancel: threading.Event | None) -> str:
    """The fingerprint of the local bytes, read once in bounded pieces."""
    if fingerprint.kind in ("full", "md5"):
        whole = new_checksum(fingerprint.algorithm) if fingerprint.algorithm else hashlib.md5(usedforsecurity=False)
        _feed(source, 0, source.size, whole, cancel)
        return whole.b64digest() if fingerprint.algorithm else whole.hexdigest()
    if fingerprint.algorithm:
        return composite_checksum(
            fingerprint.algorithm,
            _part_checksums(source, fingerprint.algorithm, fingerprint.parts, part_size, cancel),
        )
    digests: list[Any] = []
    for number in range(fingerprint.parts):
        offset = number * part_size
        part = hashlib.md5(usedforsecurity=False)
        _feed(source, offset, min(part_size, source.size - offset), part, cancel)
        digests.append(part.digest())
    return multipart_etag(digests)


def _part_checksums(
    source: Readable, algorithm: str, parts: int, part_size: int, cancel: threading.Event | None
) -> list[str]:
    """Each part's S3 checksum (base64) of the local bytes cut at ``part_size``."""
    checksums: list[str] = []
    for number in range(parts):
        offset = number * part_size
        part = new_checksum(algorithm)
        _feed(source, offset, min(part_size, source.size - offset), part, cancel)
        checksums.append(part.b64digest())
    return checksums


def _feed(source: Readable, offset: int, length: int, hasher: Any, cancel: threading.Event | None) -> None:
    end = offset + length
    while offset < end:
        if cancel is not None and cancel.is_set():
            raise UploadCancelledError("cancelled while comparing the file with the existing object")
        n = min(_READ, end - offset)
        hasher.update(source.read(offset, n))
        offset += n


def _describe(fingerprint: _Fingerprint) -> str:
    return {
        "composite": f"{fingerprint.algorithm} composite checksum of {fingerprint.parts} parts",
        "full": f"{fingerprint.algorithm} full-object checksum",
        "etag": f"multipart ETag of {fingerprint.parts} parts",
        "md5": "MD5 ETag",
    }[fingerprint.kind]
