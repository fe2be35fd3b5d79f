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

Identity: what S3 shows of an incomplete upload (its storage class, checksum algorithm and type) must
equal the task's settings. What it does not show (ACL, content type, metadata, tags, encryption, any
other object argument) cannot be proven for a found upload, so a task that sets any of them never
adopts one: only a record of ours (the operator's task_state_store, which binds a fingerprint of the
object arguments) can make such an upload ours. Every candidate is considered, newest first.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow_mpu_provider.multipart.checksums.compare import COLLISION_RESISTANT_ALGORITHMS
from airflow_mpu_provider.multipart.checksums.digests import PartDigest, checksum_field, md5_from_etag
from airflow_mpu_provider.multipart.checksums.whole_file import checksum_type_mismatch, stored_checksum_type
from airflow_mpu_provider.multipart.errors import S3UploadError
from airflow_mpu_provider.multipart.listing import list_incomplete_uploads
from airflow_mpu_provider.multipart.parts.plan import PartPlan
from airflow_mpu_provider.multipart.request_args import PER_REQUEST_ARGS
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


#: Object arguments whose value S3 shows for an incomplete upload (ListMultipartUploads, ListParts).
REVEALED_OBJECT_ARGS = frozenset({"StorageClass"})
#: Per-request arguments that describe who asks, not the object (SSE-C keys describe the object).
_WHO_ASKS = frozenset(PER_REQUEST_ARGS) - {"SSECustomerAlgorithm", "SSECustomerKey", "SSECustomerKeyMD5"}


def hidden_object_args(extra_args: Mapping[str, Any] | None) -> list[str]:
    """The task's object arguments that S3 never shows for an incomplete upload (ACL, ContentType,
    Metadata, Tagging, ServerSideEncryption, ...): a found upload cannot be proven to carry them."""
    return sorted(k for k in extra_args or {} if k not in REVEALED_OBJECT_ARGS and k not in _WHO_ASKS)


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
    **kwargs: Any,
) -> FoundUpload | None:
    """The newest of ``find_adoptable_uploads`` (same arguments), or None."""
    found = find_adoptable_uploads(client, bucket, key, plan, algorithm, **kwargs)
    return found[0] if found else None


def find_adoptable_uploads(
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
) -> list[FoundUpload]:
    """Every incomplete upload for exactly ``key`` that is quiet, fits ``plan`` and shows the task's
    settings, newest first (the engine tries each until one's parts verify), or [].

    Every other upload for the key is logged as left alone. A task with object arguments S3 does not
    show for an incomplete upload (``hidden_object_args``) adopts none. Raises S3UploadError when the
    listing itself fails (``LISTING_UNAVAILABLE_CODES``: the caller degrades to a fresh upload).
    Ages are measured with this machine's clock against S3's timestamps: a clock running ahead of
    S3's by a large part of ``quiet_after`` would shorten the window. ``checksum_type``: the type this
    upload will ask for (``resolve_checksum_type``); an upload created with another type is left alone.
    """
    log = log or logging.getLogger(__name__)
    listing = list_incomplete_uploads(client, bucket, key, extra_args=extra_args)
    uploads = sorted((u for u in listing if u.get("Key") == key), key=lambda u: _utc(u["Initiated"]), reverse=True)
    hidden = hidden_object_args(extra_args)
    found: list[FoundUpload] = []
    for upload in uploads:
        if hidden:
            reason: FoundUpload | str | None = (
                f"this task sets {', '.join(hidden)}, which S3 does not show for an incomplete upload, so it "
                "cannot be proven to carry them (only an upload this task recorded can)"
            )
        else:
            reason = _why_not_adoptable(
                client, bucket, key, upload, plan, algorithm, quiet_after, extra_args, now, checksum_type
            )
        if isinstance(reason, FoundUpload):
            found.append(reason)
            if algorithm and not reason.checksum_algorithm:
                log.warning(
                    "Incomplete upload %s of s3://%s/%s shows no checksum algorithm (the store keeps none, as "
                    "Swift, or it was created without one): if adopted, its parts are proven by their MD5 ETags "
                    "and the object gets a %s checksum only if the store keeps one (the result says which).",
                    upload["UploadId"],
                    bucket,
                    key,
                    algorithm,
                )
        elif reason:
            log.warning(
                "Leaving incomplete upload %s of s3://%s/%s alone: %s; %s.",
                upload["UploadId"],
                bucket,
                key,
                reason,
                LEFT_ALONE_HINT,
            )
    return found


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
    # ListMultipartUploads says how the upload was created (ListParts may not, as on moto).
    stored_algorithm = upload.get("ChecksumAlgorithm") or stored_algorithm or _listed_part_algorithm(parts)
    misfit = check_plan_fits(parts, plan, stored_algorithm, algorithm)
    if misfit:
        return f"it does not fit this file: {misfit}"
    reported_type = upload.get("ChecksumType") or found.listed_checksum_type
    mismatch = revealed_settings_mismatch(upload, stored_algorithm, reported_type, algorithm, checksum_type, extra_args)
    if mismatch:
        return f"it was not created with this task's settings: {mismatch}"
    return FoundUpload(upload["UploadId"], initiated, parts, stored_algorithm)


def _listed_part_algorithm(parts: Iterable[Mapping[str, Any]]) -> str | None:
    """The checksum algorithm the listed parts carry (a store whose ListParts names none shows it there)."""
    for part in parts:
        for name in part:
            if name.startswith("Checksum") and name != "ChecksumType" and part[name]:
                return name[len("Checksum") :]
    return None


def revealed_settings_mismatch(
    listed: Mapping[str, Any],
    stored_algorithm: str | None,
    stored_type: str | None,
    algorithm: str | None,
    checksum_type: str | None,
    extra_args: Mapping[str, Any] | None,
) -> str | None:
    """How what S3 shows of an incomplete upload differs from the task's settings (None: it does not).

    Storage class (S3 lists STANDARD for the default), checksum algorithm and checksum type. An upload
    for which no answer shows an algorithm (a store that keeps no checksums, as Swift) is no mismatch:
    its parts are then proven by their MD5 ETags, and only what the store verifies is reported.
    """
    wanted_class = str((extra_args or {}).get("StorageClass") or "STANDARD")
    listed_class = listed.get("StorageClass")
    if (listed_class or "STANDARD") != wanted_class:
        return f"storage class {listed_class}, this task asks for {wanted_class}"
    if stored_algorithm and not algorithm:
        return f"it was created with checksum {stored_algorithm.upper()}, this task sends none"
    if stored_algorithm and algorithm and stored_algorithm.upper() != algorithm:
        return f"it was created with checksum {stored_algorithm.upper()}, this task uses {algorithm}"
    if checksum_type:
        return checksum_type_mismatch(stored_checksum_type(stored_type, stored_algorithm), checksum_type)
    return None


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

    ``digest_local(number, with_checksum, with_md5)`` reads and hashes the local range. Every proof
    the store gives is checked: the MD5 ETag (collision-resistant) and the listed checksum alike, so a
    part whose CRC was made to match by adjusting a few bytes is still caught by its MD5. A part with
    a CRC only (no MD5 ETag: SSE-KMS, SSE-C) is verified by that CRC: ``crc_only`` tells.
    """
    number = stored["PartNumber"]
    listed = stored.get(checksum_field(algorithm)) if algorithm else None
    md5 = md5_from_etag(stored.get("ETag")) if etag_is_md5 else None
    if not listed and md5 is None:
        if not etag_is_md5:
            return (
                "its ETag is not an MD5 (the object is encrypted with SSE-KMS or SSE-C) and the store lists no "
                "checksum for it, so it cannot be verified"
            )
        return "the store reports neither a checksum nor an MD5 ETag for it, so it cannot be verified"
    digest = digest_local(number, bool(listed), md5 is not None)
    if "Size" in stored and stored["Size"] != digest.size:
        return "its bytes differ from the local file"
    if md5 is not None and digest.md5 != md5:
        return "its bytes differ from the local file"
    if listed and digest.checksum != listed:
        return "its bytes differ from the local file"
    return None


def crc_only(stored: Mapping[str, Any], algorithm: str | None, *, etag_is_md5: bool) -> bool:
    """Whether a kept part was proven by a CRC alone (no MD5 ETag, no SHA checksum): said in the log."""
    if etag_is_md5 and md5_from_etag(stored.get("ETag")) is not None:
        return False
    return algorithm not in COLLISION_RESISTANT_ALGORITHMS


def object_args_fingerprint(extra_args: Mapping[str, Any] | None) -> str:
    """A SHA-256 of the object arguments an upload is created with (ACL, ContentType, Metadata, Tagging,
    encryption, StorageClass, ...), for a record to bind what S3 does not show of an incomplete upload.

    The arguments that say who asks (RequestPayer, ExpectedBucketOwner) are left out; an SSE-C key is
    represented by its MD5, never by itself. Datetimes (ObjectLockRetainUntilDate) by their ISO form.
    """
    args = {k: v for k, v in (extra_args or {}).items() if k not in _WHO_ASKS}
    key = args.pop("SSECustomerKey", None)
    if key is not None:
        raw = key.encode() if isinstance(key, str) else bytes(key)
        args["SSECustomerKeyMD5"] = base64.b64encode(hashlib.md5(raw, usedforsecurity=False).digest()).decode()
    canonical = json.dumps(args, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
