"""Finding an earlier upload of the same file and deciding which of its parts can be kept.

Nothing stored in S3 is trusted on its word: a part is kept only when its size is the one the plan
gives that part number and its checksum (or, where the store reports no checksum, its MD5 ETag)
matches the local bytes of that range. Anything else is sent again.

Ownership decides what may be done to an earlier upload:

* **ours**: created by this try, or recorded by an earlier try of the same task (the caller knows
  which: Airflow's task_state_store). Ours is continued, or aborted when it cannot be.
* **found**: seen by ListMultipartUploads with no record. It may be another run's *live* upload
  (a manual re-run, a backfill, two DAGs writing one key), so it is never aborted and never written
  to unless it is verifiably not live: initiated, and every part written, more than a quiet window
  ago (``find_adoptable_upload``), its parts fit the plan, and every stored part verifies against
  the local bytes (the engine checks that last). Anything else is left alone for the janitor
  (S3AbortStaleUploadsOperator) or a bucket lifecycle rule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow_mpu_provider.multipart.errors import S3UploadError
from airflow_mpu_provider.multipart.full_object import checksum_type_mismatch, stored_checksum_type
from airflow_mpu_provider.multipart.integrity import PartDigest, checksum_field, part_matches
from airflow_mpu_provider.multipart.listing import list_incomplete_uploads
from airflow_mpu_provider.multipart.plan import PartPlan
from airflow_mpu_provider.multipart.units import format_bytes, format_duration
from airflow_mpu_provider.multipart.upload import MultipartUpload

#: How long a found upload must have been untouched (initiation and every part) before it may be
#: adopted. A live upload of this provider writes a part every few seconds, but some phases write
#: nothing for minutes: one 5 GiB part on a slow link, re-verifying hundreds of GiB of stored parts
#: before a resume, a 10,000-part CompleteMultipartUpload. 15 minutes covers those with margin, and
#: is longer than Airflow's default retry_delay (5 minutes) on purpose: on Airflow < 3.3, where a
#: retry can only find its predecessor's upload by listing, the operator keeps an upload for the
#: retry only if the retry waits at least this long (see the operator's ``adopt_quiet_after``).
DEFAULT_ADOPT_QUIET_AFTER = timedelta(minutes=15)

#: ListMultipartUploads answers meaning "not here": a store without the API, or a role without
#: s3:ListBucketMultipartUploads. The upload itself can still be done; only resume across runs is lost.
LISTING_UNAVAILABLE_CODES = frozenset({"NotImplemented", "AccessDenied", "MethodNotAllowed", "501", "405", "403"})

#: Said whenever an upload is left alone, so that whoever reads the log knows who does clean it up.
LEFT_ALONE_HINT = (
    "it is not this task's (nothing recorded it), so it is never aborted here; if it is a leftover, "
    "S3AbortStaleUploadsOperator or a bucket lifecycle rule (AbortIncompleteMultipartUpload) cleans it up"
)


@dataclass(frozen=True)
class FoundUpload:
    """An incomplete upload seen by ListMultipartUploads that looks adoptable (quiet, fits the plan)."""

    upload_id: str
    initiated: datetime
    parts: list[dict[str, Any]]
    checksum_algorithm: str | None


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def find_adoptable_upload(
    client: Any,
    bucket: str,
    key: str,
    plan: PartPlan,
    algorithm: str | None,
    *,
    quiet_after: timedelta = DEFAULT_ADOPT_QUIET_AFTER,
    extra_args: Mapping[str, Any] | None = None,
    log: logging.Logger | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    checksum_type: str | None = None,
) -> FoundUpload | None:
    """The newest incomplete upload for exactly ``key`` that is quiet and fits ``plan``, or None.

    Every other upload for the key is logged as left alone. Raises S3UploadError when the listing
    itself fails (``LISTING_UNAVAILABLE_CODES``: the caller degrades to a fresh upload).
    Ages are measured with this machine's clock against S3's timestamps: a clock running ahead of
    S3's by a large part of ``quiet_after`` would shorten the window. ``checksum_type``: the type this
    upload will ask for (``resolve_checksum_type``); an upload created with another type is left alone.
    """
    log = log or logging.getLogger(__name__)
    listing = list_incomplete_uploads(client, bucket, key, extra_args=extra_args)
    uploads = [u for u in listing if u.get("Key") == key]
    for upload in sorted(uploads, key=lambda u: _utc(u["Initiated"]), reverse=True):
        upload_id = upload["UploadId"]
        reason = _why_not_adoptable(
            client, bucket, key, upload, plan, algorithm, quiet_after, extra_args, now, checksum_type
        )
        if isinstance(reason, FoundUpload):
            return reason
        if reason:
            log.warning(
                "Leaving incomplete upload %s of s3://%s/%s alone: %s; %s.",
                upload_id,
                bucket,
                key,
                reason,
                LEFT_ALONE_HINT,
            )
    return None


def _why_not_adoptable(
    client: Any,
    bucket: str,
    key: str,
    upload: Mapping[str, Any],
    plan: PartPlan,
    algorithm: str | None,
    quiet_after: timedelta,
    extra_args: Mapping[str, Any] | None,
    now: Callable[[], datetime],
    checksum_type: str | None = None,
) -> FoundUpload | str | None:
    """The FoundUpload if ``upload`` may be adopted, else why not (None: it vanished meanwhile)."""
    initiated = _utc(upload["Initiated"])
    age = now() - initiated
    if age < quiet_after:
        return (
            f"it was initiated {format_duration(age)} ago, less than adopt_quiet_after "
            f"({format_duration(quiet_after)}): it may be live"
        )
    found = MultipartUpload(
        client, bucket, key, upload_id=upload["UploadId"], checksum_algorithm=algorithm, extra_args=extra_args
    )
    try:
        parts, stored_algorithm = found.list_parts()
    except S3UploadError as e:
        if e.code == "NoSuchUpload":
            return None  # completed or aborted since the listing: nothing to adopt, nothing to leave
        raise
    written = [_utc(p["LastModified"]) for p in parts if p.get("LastModified")]
    if written and now() - max(written) < quiet_after:
        return (
            f"a part was written {format_duration(now() - max(written))} ago, less than adopt_quiet_after "
            f"({format_duration(quiet_after)}): it may be live"
        )
    misfit = check_plan_fits(parts, plan, stored_algorithm, algorithm)
    if not misfit and checksum_type:
        # ListMultipartUploads says how the upload was created (ListParts may not, as on moto).
        reported = upload.get("ChecksumType") or found.listed_checksum_type
        stored_type = stored_checksum_type(reported, upload.get("ChecksumAlgorithm") or stored_algorithm)
        misfit = checksum_type_mismatch(stored_type, checksum_type)
    if misfit:
        return f"it does not fit this file: {misfit}"
    return FoundUpload(upload["UploadId"], initiated, parts, stored_algorithm)


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
