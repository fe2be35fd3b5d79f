"""Finding an earlier upload of the same file and deciding which of its parts can be kept.

Nothing stored in S3 is trusted on its word: a part is kept only when its size is the one the plan
gives that part number and its checksum (or, where the store reports no checksum, its MD5 ETag)
matches the local bytes of that range. Anything else is sent again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_mpu_provider.multipart.integrity import PartDigest, checksum_field, part_matches
from airflow_mpu_provider.multipart.plan import PartPlan, format_bytes
from airflow_mpu_provider.multipart.upload import list_incomplete_uploads


def find_resumable_upload(
    client: Any, bucket: str, key: str, *, extra_args: Mapping[str, Any] | None = None
) -> str | None:
    """The newest incomplete multipart upload for exactly ``key`` (never a key that merely shares its prefix).

    ``extra_args``: the upload's arguments, whose per-request ones (RequestPayer, ...) the listing repeats.
    """
    uploads = [u for u in list_incomplete_uploads(client, bucket, key, extra_args=extra_args) if u.get("Key") == key]
    if not uploads:
        return None
    return max(uploads, key=lambda u: u["Initiated"])["UploadId"]


@dataclass
class StoredPartsReview:
    """The verdict on an earlier upload's parts."""

    #: Why the upload cannot be continued at all (the plan does not fit it), or None.
    incompatible: str | None = None
    #: Part number -> stored part whose bytes were verified against the local file.
    kept: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: Part number -> why a stored part will be sent again.
    rejected: dict[int, str] = field(default_factory=dict)


def check_plan_fits(
    stored: Iterable[dict[str, Any]], plan: PartPlan, stored_algorithm: str | None, algorithm: str | None
) -> str | None:
    """Why the stored parts cannot belong to this plan (file size or part size changed), or None."""
    if stored_algorithm and algorithm and stored_algorithm.upper() != algorithm:
        return f"the earlier upload used checksum {stored_algorithm}, this one uses {algorithm}"
    for part in stored:
        number = part["PartNumber"]
        if number > plan.count:
            return (
                f"it holds part {number} but {format_bytes(plan.size)} in parts of "
                f"{format_bytes(plan.part_size)} has only {plan.count} parts (the file or part size changed)"
            )
        expected = plan.part(number).length
        if part["Size"] != expected:
            return (
                f"its part {number} is {part['Size']:,} bytes but the plan gives it {expected:,} "
                "(the file or part size changed)"
            )
    return None


def review_stored_part(
    stored: dict[str, Any],
    algorithm: str | None,
    digest_local: Callable[[int, bool, bool], PartDigest],
    *,
    etag_is_md5: bool = True,
) -> str | None:
    """Why ``stored`` does not hold the local bytes of its range, or None if it verifiably does.

    ``digest_local(number, with_checksum, with_md5)`` reads and hashes the local range; only the
    hash the store can be compared with is computed.
    """
    number = stored["PartNumber"]
    has_checksum = bool(algorithm and stored.get(checksum_field(algorithm)))
    if not has_checksum and not etag_is_md5:
        return (
            "its ETag is not an MD5 (the object is encrypted with SSE-KMS or SSE-C) and the store lists no "
            "checksum for it, so it cannot be verified"
        )
    digest = digest_local(number, has_checksum, not has_checksum)
    verdict = part_matches(digest, stored, algorithm if has_checksum else None)
    if verdict is None:
        return "the store reports neither a checksum nor an MD5 ETag for it, so it cannot be verified"
    if verdict is False:
        return "its bytes differ from the local file"
    return None
