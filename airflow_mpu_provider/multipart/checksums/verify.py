"""Is the object a Complete made the one our parts make? A pure verdict from S3's answers; no I/O.

What can prove the object, strongest first:

* its multipart ETag, ``md5(md5(part 1) + ... + md5(part N))-N``, where every part's MD5 is known
  locally and ETags are MD5s (not under SSE-KMS/SSE-C): it binds every byte, and every store computes it;
* the object checksum the store keeps: the whole file's CRC (FULL_OBJECT) or the checksum of the part
  checksums (COMPOSITE, ``value-N``; some stores leave out ``-N``, some leave out the type);
* the size alone, which proves little, and is said to be all there was.

A checksum that matches neither of the file's values is a *checksum problem*: the object may be corrupt,
or the store may compute the checksum another way (moto without the ``crc32c`` package computes CRC32
and labels it CRC32C). ``identify`` tells which algorithm, if any, the reported value is of the file; the
engine then judges the object by what it can still prove (the ETag, or that other checksum).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_mpu_provider.multipart.checksums.digests import composite_checksum, composite_matches, multipart_etag
from airflow_mpu_provider.multipart.checksums.whole_file import (
    COMPOSITE,
    FULL_OBJECT,
    FULL_OBJECT_ALGORITHMS,
    full_object_checksum,
    reported_checksum,
)
from airflow_mpu_provider.multipart.parts.record import PartRecord


@dataclass(frozen=True)
class Expected:
    """What the object must show, computed from the parts (None: nothing to compare with)."""

    size: int
    algorithm: str | None = None
    #: The multipart ETag, quoted as S3 gives it.
    etag: str | None = None
    #: COMPOSITE checksum, "value-N".
    composite: str | None = None
    #: The whole file's CRC, combined from the parts' CRCs.
    whole: str | None = None
    #: Whether the whole-file checksum was asked for (ChecksumType=FULL_OBJECT sent at Complete).
    full_object_asked: bool = False


def expected_from_parts(
    parts: Sequence[PartRecord], size: int, algorithm: str | None, *, etags_are_md5: bool, full_object_asked: bool
) -> Expected:
    """The ETag and checksums the parts predict, each only where every part contributes to it."""
    md5s = [p.md5 for p in parts]
    etag = multipart_etag(m for m in md5s if m is not None) if etags_are_md5 and all(md5s) and parts else None
    checksums = [p.checksum for p in parts]
    composite = whole = None
    if algorithm and parts and all(checksums):
        composite = composite_checksum(algorithm, [c for c in checksums if c])
        if algorithm in FULL_OBJECT_ALGORITHMS:
            whole = full_object_checksum(algorithm, [(p.checksum, p.size) for p in parts if p.checksum])
    return Expected(size, algorithm, etag, composite, whole, full_object_asked)


@dataclass
class Verdict:
    """What was compared and how it came out."""

    #: What proved the object, for the log ("size", "ETag", "CRC32C checksum", ...).
    verified: list[str] = field(default_factory=list)
    #: Mismatches of size or ETag: the object is not the parts' bytes.
    problems: list[str] = field(default_factory=list)
    #: A reported checksum that matches neither of the file's values (corruption, or a store's defect).
    checksum_problem: str | None = None
    #: The store's checksum value behind ``checksum_problem``.
    reported: str | None = None
    #: The object checksum the store keeps and that was verified, and its type (for the result).
    checksum: str | None = None
    checksum_type: str | None = None
    #: Things to warn about that do not make the object wrong.
    notes: list[str] = field(default_factory=list)

    @property
    def proved(self) -> bool:
        """Something stronger than the size proved the object."""
        return any(v != "size" for v in self.verified)


def judge(expected: Expected, response: Mapping[str, Any], head: Mapping[str, Any] | None) -> Verdict:
    """Compare Complete's answer (and HeadObject's of the same object, None if there is none) with the parts."""
    verdict = Verdict()
    if head is not None:
        if head.get("ContentLength") != expected.size:
            verdict.problems.append(f"size is {head.get('ContentLength')} bytes, expected {expected.size}")
        else:
            verdict.verified.append("size")
    etag = response.get("ETag")
    if expected.etag is not None:
        if etag == expected.etag:
            verdict.verified.append("ETag")
        else:
            verdict.problems.append(f"ETag is {etag}, expected {expected.etag} from the parts' MD5s")
    if expected.algorithm:
        _judge_checksum(expected, _reported(expected.algorithm, response, head), verdict)
    return verdict


def _reported(
    algorithm: str, response: Mapping[str, Any], head: Mapping[str, Any] | None
) -> tuple[str | None, str | None]:
    value, kind = reported_checksum(response, algorithm)
    if value is None and head is not None:
        value, kind = reported_checksum(head, algorithm)
    return value, kind


def _judge_checksum(expected: Expected, reported: tuple[str | None, str | None], verdict: Verdict) -> None:
    value, kind = reported
    algorithm = expected.algorithm
    if value is None or (expected.composite is None and expected.whole is None):
        return  # the store keeps none, or the parts do not predict one: nothing to compare
    if kind != COMPOSITE and expected.whole is not None and value == expected.whole:
        verdict.verified.append(f"{algorithm} full-object checksum")
        verdict.checksum, verdict.checksum_type = expected.whole, FULL_OBJECT
        return
    if kind != FULL_OBJECT and composite_matches(value, expected.composite):
        verdict.verified.append(f"{algorithm} checksum")
        verdict.checksum, verdict.checksum_type = expected.composite, COMPOSITE
        if expected.full_object_asked:
            verdict.notes.append(
                f"the store ignored ChecksumType=FULL_OBJECT: the object has a COMPOSITE {algorithm} checksum "
                f"({value}), not the whole-file one. Set checksum_type='COMPOSITE' for this store"
            )
        return
    verdict.reported = value
    if kind == FULL_OBJECT:
        verdict.checksum_problem = (
            f"full-object checksum {algorithm} is {value}, expected {expected.whole} from the parts' CRCs"
        )
    elif kind == COMPOSITE or expected.whole is None:
        verdict.checksum_problem = (
            f"checksum {algorithm} is {value}, expected the composite {expected.composite} "
            "(or the value without its -N)"
        )
    else:
        verdict.checksum_problem = (
            f"checksum {algorithm} is {value}, expected the composite {expected.composite} (or the value "
            f"without its -N) or the whole-file {expected.whole}"
        )


def identify(
    value: str, algorithm: str, alternatives: Mapping[str, Sequence[tuple[str, int]]]
) -> tuple[str, str] | None:
    """Which of the file's checksums under another algorithm ``value`` is: (algorithm, "whole-file" or
    "composite"), or None. ``alternatives``: per algorithm, each part's (base64 checksum, size) of the file."""
    bare = value.split("-")[0]
    for other, parts in alternatives.items():
        if other == algorithm or not parts:
            continue
        if other in FULL_OBJECT_ALGORITHMS and full_object_checksum(other, parts) == bare:
            return other, "whole-file"
        if composite_checksum(other, [c for c, _ in parts]).split("-")[0] == bare:
            return other, "composite"
    return None


def store_defect_hint(algorithm: str, other: str) -> str:
    """How to fix a store that reports ``other`` under ``algorithm``'s name."""
    fix = (
        "moto computes CRC32 for CRC32C when the optional crc32c package is missing: install it where moto runs "
        "(pip install 'moto[s3crc32c]' or crc32c); "
        if (algorithm, other) == ("CRC32C", "CRC32")
        else ""
    )
    return f"{fix}or choose another checksum_algorithm for this store (e.g. 'SHA256', or None for MD5 only)"


def quoted(etag: str | None) -> str | None:
    """An ETag as S3 quotes it (stores differ in whether answers carry the quotes)."""
    return f'"{etag.strip(chr(34))}"' if etag else None
