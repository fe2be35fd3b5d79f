"""Whole-file (FULL_OBJECT) checksums of multipart uploads, combined from the parts' CRCs. No I/O.

S3 gives a multipart object one of two checksums (``ChecksumType``):

* COMPOSITE: the checksum of the concatenated part checksums, ``value-N``. It depends on where the
  parts were cut, so a restore can only check it by cutting the file the same way.
* FULL_OBJECT (CRC32, CRC32C, CRC64NVME; S3 since Dec 2024): the CRC of the whole object, exactly
  what any CRC tool computes for the local file, whatever the part size.

A CRC of a concatenation follows from the CRCs of its pieces and their lengths (zlib's
``crc32_combine``): the engine already has every part's CRC (computed as the part was sent, or, for a
resumed part, listed by the store or computed while the part was verified), so the whole-file value
costs no second pass over the file, and a resumed upload still gets one. ``awscrt`` >= 0.31 combines
in C; with older awscrt (the declared floor is 0.23) a pure-Python combine does the same work, fast
enough because all parts but the last have one length and the operator for that length is computed
once (10,000 parts take milliseconds).
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterable, Mapping
from typing import Any

from airflow_mpu_provider.multipart.errors import InvalidUploadRequest

try:  # awscrt >= 0.31; the package's floor (0.23) has the CRCs but not the combine functions
    from awscrt import checksums as _crt_checksums
except ImportError:  # pragma: no cover - awscrt is a dependency
    _crt_checksums = None

FULL_OBJECT = "FULL_OBJECT"
COMPOSITE = "COMPOSITE"
CHECKSUM_TYPES = (FULL_OBJECT, COMPOSITE)

#: Reflected CRC parameters (width in bits, reflected polynomial). All three start from all ones and
#: end xor all ones, which is what lets the combine below ignore the pre/post conditioning.
_CRC_PARAMETERS: dict[str, tuple[int, int]] = {
    "CRC32": (32, 0xEDB88320),
    "CRC32C": (32, 0x82F63B78),
    "CRC64NVME": (64, 0x9A6C9329AC4BC9B5),
}
#: Algorithms S3 allows with FULL_OBJECT, and with COMPOSITE (CRC64NVME is full-object only).
FULL_OBJECT_ALGORITHMS = frozenset(_CRC_PARAMETERS)
COMPOSITE_ALGORITHMS = frozenset({"CRC32", "CRC32C", "SHA1", "SHA256"})

_CRT_COMBINE = {"CRC32": "combine_crc32", "CRC32C": "combine_crc32c", "CRC64NVME": "combine_crc64nvme"}


def resolve_checksum_type(checksum_type: Any, algorithm: str | None) -> str | None:
    """The checksum type an upload with ``algorithm`` (already normalized) will ask for, or an error.

    None (the default) picks FULL_OBJECT for the CRCs and COMPOSITE for SHA1/SHA256; without a
    checksum algorithm (Content-MD5 only) there is no object checksum and no type.
    """
    if checksum_type is not None and not isinstance(checksum_type, str):
        raise InvalidUploadRequest(
            f"checksum_type must be 'FULL_OBJECT', 'COMPOSITE' or None, got {checksum_type!r} "
            f"({type(checksum_type).__name__})."
        )
    wanted = checksum_type.strip().upper() if checksum_type else None
    if wanted is not None and wanted not in CHECKSUM_TYPES:
        raise InvalidUploadRequest(
            f"checksum_type={checksum_type!r} is not a checksum type; use 'FULL_OBJECT' (one CRC of the whole "
            "file), 'COMPOSITE' (a checksum of the part checksums), or None for the default."
        )
    if algorithm is None:
        if wanted is not None:
            raise InvalidUploadRequest(
                f"checksum_type={checksum_type!r} needs a checksum_algorithm; checksum_algorithm=None sends "
                "Content-MD5 only, and the object gets no S3 checksum. Set checksum_algorithm (e.g. 'CRC32C') "
                "or leave checksum_type=None."
            )
        return None
    if wanted is None:
        return FULL_OBJECT if algorithm in FULL_OBJECT_ALGORITHMS else COMPOSITE
    if wanted == FULL_OBJECT and algorithm not in FULL_OBJECT_ALGORITHMS:
        raise InvalidUploadRequest(
            f"checksum_type='FULL_OBJECT' works only with checksum_algorithm 'CRC32', 'CRC32C' or 'CRC64NVME' "
            f"(S3 computes whole-object checksums only for CRCs), not {algorithm!r}; use checksum_type='COMPOSITE' "
            f"with {algorithm}, or a CRC algorithm."
        )
    if wanted == COMPOSITE and algorithm not in COMPOSITE_ALGORITHMS:
        raise InvalidUploadRequest(
            f"checksum_type='COMPOSITE' does not work with checksum_algorithm {algorithm!r}: S3 supports "
            f"{algorithm} only as a FULL_OBJECT checksum; use checksum_type='FULL_OBJECT' (or None), or "
            "'CRC32C' for a composite checksum."
        )
    return wanted


def stored_checksum_type(reported: str | None, algorithm: str | None) -> str | None:
    """The checksum type of an upload as the store describes it, or None when nothing says.

    A store that reports an algorithm but no type uses S3's default: FULL_OBJECT for CRC64NVME,
    COMPOSITE for the others (it may also be a store that knows no types: then it is composite too).
    """
    if reported:
        return reported.upper()
    if algorithm:
        return FULL_OBJECT if algorithm.upper() == "CRC64NVME" else COMPOSITE
    return None


def checksum_type_mismatch(stored: str | None, wanted: str | None) -> str | None:
    """Why an upload whose checksum type is ``stored`` cannot be continued as ``wanted`` (None: it can)."""
    if stored and wanted and stored != wanted:
        return f"the earlier upload used checksum type {stored}, this one uses {wanted}"
    return None


# -- combining CRCs ---------------------------------------------------------------------------


def _multiply(a: int, b: int, width: int, poly: int) -> int:
    """a * b modulo the polynomial, both in reflected bit order (zlib's ``multmodp``)."""
    m = 1 << (width - 1)
    product = 0
    while True:
        if a & m:
            product ^= b
            if not a & (m - 1):
                return product
        m >>= 1
        b = (b >> 1) ^ poly if b & 1 else b >> 1


@functools.lru_cache(maxsize=64)
def _shift_operator(algorithm: str, length: int) -> int:
    """x**(8*length) modulo the polynomial: what a CRC is multiplied by to skip ``length`` zero bytes.

    Cached: a file's parts have one or two lengths, so a 10,000-part upload computes it twice.
    """
    width, poly = _CRC_PARAMETERS[algorithm]
    power = 1 << (width - 2)  # x**1, reflected
    result = 1 << (width - 1)  # x**0
    bits = 8 * length
    while bits:
        if bits & 1:
            result = _multiply(power, result, width, poly)
        power = _multiply(power, power, width, poly)
        bits >>= 1
    return result


def combine_crc_python(algorithm: str, crc1: int, crc2: int, length2: int) -> int:
    """The CRC of A+B from crc(A), crc(B) and len(B), for S3's reflected CRCs; pure Python."""
    width, poly = _CRC_PARAMETERS[algorithm]
    return _multiply(_shift_operator(algorithm, length2), crc1, width, poly) ^ crc2


def _crt_combine(algorithm: str) -> Any:
    name = _CRT_COMBINE.get(algorithm)
    return getattr(_crt_checksums, name, None) if _crt_checksums is not None and name else None


def combine_crc(algorithm: str, crc1: int, crc2: int, length2: int) -> int:
    """The CRC of A+B from crc(A), crc(B) and len(B): awscrt's combine where it has one, else Python's."""
    if algorithm not in _CRC_PARAMETERS:
        raise ValueError(f"{algorithm} is not a CRC; only CRC32, CRC32C and CRC64NVME combine")
    crt = _crt_combine(algorithm)
    if crt is not None:
        return crt(crc1, crc2, length2)
    return combine_crc_python(algorithm, crc1, crc2, length2)


def crc_from_b64(algorithm: str, value: str) -> int:
    """S3's base64 form of a CRC (big-endian bytes) as an int."""
    raw = base64.b64decode(value)
    width = _CRC_PARAMETERS[algorithm][0] // 8
    if len(raw) != width:
        raise ValueError(f"{value!r} is not a {algorithm} checksum ({len(raw)} bytes, expected {width})")
    return int.from_bytes(raw, "big")


def crc_to_b64(algorithm: str, crc: int) -> str:
    return base64.b64encode(crc.to_bytes(_CRC_PARAMETERS[algorithm][0] // 8, "big")).decode()


def crc_hex(algorithm: str, value_b64: str) -> str:
    """The hex form CRC tools print (e.g. ``rhash --crc32c``), for the log line a restore checks."""
    return f"{crc_from_b64(algorithm, value_b64):0{_CRC_PARAMETERS[algorithm][0] // 4}x}"


def full_object_checksum(algorithm: str, parts: Iterable[tuple[str, int]]) -> str:
    """The whole-object CRC (base64, as S3 reports it) of parts given in order as (base64 CRC, size)."""
    combined: int | None = None
    for value, size in parts:
        crc = crc_from_b64(algorithm, value)
        combined = crc if combined is None else combine_crc(algorithm, combined, crc, size)
    if combined is None:
        raise ValueError("a full-object checksum needs at least one part")
    return crc_to_b64(algorithm, combined)


# -- what the store says about full-object checksums -------------------------------------------

#: Error codes with which a store may refuse ChecksumType (an argument it does not know or support).
_CREATE_REFUSALS = frozenset({"InvalidArgument", "InvalidRequest", "NotImplemented", "BadRequest", "400", "501"})


def create_may_refuse_type(code: str | None) -> bool:
    """Whether CreateMultipartUpload's error may be the store refusing ChecksumType=FULL_OBJECT.

    Decided by trying again without it: if that succeeds, the type was what the store refused.
    """
    return code in _CREATE_REFUSALS


def complete_refuses_type(code: str | None, message: str) -> bool:
    """Whether CompleteMultipartUpload's error is the store refusing the full-object checksum.

    NotImplemented always is (the store does not do the request as sent); an invalid-argument error
    only when it names the checksum type, so that a refused *value* (a checksum that does not match
    the bytes) is never taken for a store that lacks the feature.
    """
    if code in ("NotImplemented", "501"):
        return True
    text = message.lower()
    names_type = any(word in text for word in ("checksumtype", "checksum type", "x-amz-checksum-type", "full_object"))
    return code in ("InvalidArgument", "InvalidRequest") and names_type and "match" not in text


#: Codes with which a store may refuse the parts' checksums in CompleteMultipartUpload's body, when its message
#: names checksums (MalformedXML always: a schema that allows only PartNumber and ETag, OpenStack Swift's).
_CHECKSUM_REFUSALS = frozenset({"InvalidArgument", "InvalidRequest", "NotImplemented", "BadRequest", "InvalidPart"})


def complete_refuses_checksums(code: str | None, message: str) -> bool:
    """Whether CompleteMultipartUpload's error may be the store refusing the checksums it was sent.

    Falling back to PartNumber and ETag only is safe even when the refusal was about a value (Wasabi's
    "Checksum Type mismatch"): the object is then verified by its ETag (the parts' MD5s), which every store
    computes from the bytes it holds.
    """
    return code == "MalformedXML" or (code in _CHECKSUM_REFUSALS and "checksum" in message.lower())


def complete_wants_checksums(code: str | None, message: str) -> bool:
    """Whether a Complete sent without part checksums was refused for lacking them (an upload created with
    a checksum algorithm on a store that requires them back but echoed none)."""
    text = message.lower()
    return code in _CHECKSUM_REFUSALS and "checksum" in text and ("must" in text or "missing" in text)


def reported_checksum(response: Mapping[str, Any], algorithm: str) -> tuple[str | None, str | None]:
    """The object checksum a Complete or HeadObject answer reports, and its type (from ``ChecksumType``
    or, where a store leaves it out, from the ``-N`` suffix of a composite value)."""
    value = response.get(f"Checksum{algorithm}")
    if not value:
        return None, None
    kind = str(response.get("ChecksumType") or "").upper() or None
    if kind is None:
        _, dash, count = str(value).rpartition("-")
        kind = COMPOSITE if dash and count.isdigit() else None
    return str(value), kind


def describe_whole_file(algorithm: str, value_b64: str) -> str:
    """How the log states the whole-file checksum, in both forms restore-side tools print."""
    return f"{algorithm} of the whole file: {value_b64} (hex {crc_hex(algorithm, value_b64)})"
