"""The project's exceptions, and the translation of S3's error codes into messages that say what to do.

Every S3 error that reaches a user names the bucket, key and UploadId, so it can be found in the
console or cleaned up; none of them ever contains credentials (botocore's messages do not either).
"""

from __future__ import annotations

from botocore.exceptions import ClientError


class MultipartUploadError(Exception):
    """Base class: anything this package raises on purpose."""


class InvalidUploadRequest(MultipartUploadError, ValueError):
    """The arguments can never work (bad path, bad part size, ...); raised before any S3 call."""


class SourceChangedError(MultipartUploadError):
    """The local file changed while it was being uploaded, so the object would not match any version of it."""


class UploadCancelledError(MultipartUploadError):
    """The upload was cancelled (``on_kill``, a timeout); it has been aborted."""


class IntegrityError(MultipartUploadError):
    """What S3 stored is not what was sent (size, ETag or checksum differs)."""


class S3UploadError(MultipartUploadError):
    """An S3 request failed; carries S3's error code and where it happened."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        operation: str,
        bucket: str,
        key: str,
        upload_id: str | None,
        status: int | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        #: The HTTP status of S3's answer (None where the package raised it itself).
        self.status = status
        #: The store's own message (None where the package raised it itself).
        self.reason = reason
        self.operation = operation
        self.bucket = bucket
        self.key = key
        self.upload_id = upload_id


#: S3 error codes after which an upload is of no use to a retry: the engine aborts it whatever the
#: retry policy (``keep_upload_for_retry``), and a retry of the task starts a new upload.
#: (ObjectExists is the package's own: replace=False found another object at the key.)
NOT_RESUMABLE_CODES = frozenset(
    {"NoSuchUpload", "NoSuchBucket", "InvalidPart", "InvalidPartOrder", "EntityTooSmall", "ObjectExists"}
)

#: What happens next, in the engine's words (see ``BaseUploadEngine._after_failure``).
ABORTED = "The upload is aborted; a retry of the task starts a new one."
KEPT_FOR_RETRY = (
    "If an upload was started and the task has retries left (keep_upload_for_retry=True), it is kept and the "
    "retry resumes it, sending only the parts S3 does not verifiably hold (before Airflow 3.3 only when "
    "retry_delay >= adopt_quiet_after, since the retry finds it by listing); otherwise it is aborted."
)

#: What each S3 error means for this upload, what the user should do, and what happens next.
ERROR_HINTS: dict[str, str] = {
    "EntityTooSmall": (
        "a part other than the last is smaller than S3's 5 MiB minimum; use part_size >= 5 MiB "
        "(or leave it unset). An S3-compatible store may have a larger minimum: check its documentation. " + ABORTED
    ),
    "EntityTooLarge": (
        "a part is larger than the store accepts; use a smaller part_size (S3's maximum is 5 GiB). A retry with "
        "the same part_size fails the same way; a run with another part_size aborts the kept upload and starts "
        "afresh. " + KEPT_FOR_RETRY
    ),
    "InvalidPart": (
        "a listed part was not found or its ETag does not match what the store holds; the parts were "
        "changed or lost on the server side. " + ABORTED + " It sends every part again."
    ),
    "InvalidPartOrder": (
        "the part list was not in ascending order; this is a bug in airflow-mpu-provider, please report it. " + ABORTED
    ),
    "NoSuchUpload": (
        "the multipart upload no longer exists: it was aborted (by another task, a bucket lifecycle rule "
        "or S3AbortStaleUploadsOperator) or already completed. There is nothing left to abort; a retry of the "
        "task starts a new upload."
    ),
    "NoSuchBucket": (
        "the bucket does not exist (or is in another account/region); check the bucket name and the "
        "connection's region. " + ABORTED
    ),
    "AccessDenied": (
        "the connection's credentials may not do this; the role needs s3:PutObject, s3:GetObject, "
        "s3:AbortMultipartUpload and s3:ListMultipartUploadParts on the objects, s3:ListBucket and "
        "s3:ListBucketMultipartUploads on the bucket (see the README's policy), and kms:GenerateDataKey and "
        "kms:Decrypt for SSE-KMS; a requester-pays bucket needs extra_args={'RequestPayer': 'requester'}. "
        + KEPT_FOR_RETRY
        + " An abort the role may not do fails too: the upload then stays until S3AbortStaleUploadsOperator or "
        "a lifecycle rule removes it."
    ),
    "InvalidAccessKeyId": (
        "the connection's access key id is not known to the store; check the Airflow connection's credentials. "
        "Nothing can be created or aborted with these credentials: an upload started earlier stays until "
        "S3AbortStaleUploadsOperator (with working credentials) or a lifecycle rule removes it."
    ),
    "SignatureDoesNotMatch": (
        "the connection's secret key is wrong for its access key id; check the Airflow connection's credentials. "
        "Nothing can be created or aborted with these credentials: an upload started earlier stays until "
        "S3AbortStaleUploadsOperator (with working credentials) or a lifecycle rule removes it."
    ),
    "BadDigest": (
        "the bytes S3 received do not match their checksum: data was corrupted in transit and the part was not "
        "stored. " + KEPT_FOR_RETRY
    ),
    "InvalidDigest": (
        "the store rejected the part's checksum header; for an S3-compatible store that does not support "
        "checksums, set checksum_algorithm=None. " + KEPT_FOR_RETRY
    ),
    "InvalidRequest": (
        "the store rejected the request; for an S3-compatible store that rejects CRC checksums, "
        "set checksum_algorithm=None. " + KEPT_FOR_RETRY
    ),
    "NotImplemented": (
        "the store does not implement a header this request carries (S3's answer to a header it does not "
        "support); for an S3-compatible store without checksum support, set checksum_algorithm=None; else "
        "leave out the argument it does not support (storage_class, tags, acl, encryption). " + KEPT_FOR_RETRY
    ),
    "MalformedXML": (
        "the store could not parse the request's XML, or its schema does not allow an element in it (some "
        "S3-compatible stores, OpenStack Swift among them, accept only PartNumber and ETag in "
        "CompleteMultipartUpload; the engine already retries once without checksums there). " + KEPT_FOR_RETRY
    ),
    "ConditionalRequestConflict": (
        "another conditional write to the same key (replace=False) ran at the same moment and S3 let only one "
        "of them proceed. " + KEPT_FOR_RETRY + " A retry first checks the key: an object that already holds "
        "the file is success, any other object is never replaced."
    ),
    "KMS.NotFoundException": ("the KMS key was not found; check sse_kms_key_id and its region. " + KEPT_FOR_RETRY),
    "SlowDown": (
        "S3 throttled the requests past the retry budget; lower concurrency or raise the connection's retries. "
        + KEPT_FOR_RETRY
    ),
}


#: HTTP 412: a precondition (If-None-Match, If-Match) failed, whatever code the store gives it (AWS says
#: PreconditionFailed, OpenStack Swift's s3api InvalidRequest).
PRECONDITION_FAILED_STATUS = 412
_PRECONDITION_HINT = (
    "a condition of the request did not hold: with replace=False, an object appeared at the key while the upload "
    "ran (the engine compares it with the source before it reports this). " + KEPT_FOR_RETRY
)
#: The hints of codes whose usual advice is checksum_algorithm=None, for an upload where it already was None.
_HINTS_WITHOUT_CHECKSUMS: dict[str, str] = {
    "InvalidDigest": "the store rejected the part's Content-MD5 header. " + KEPT_FOR_RETRY,
    "InvalidRequest": "the store rejected the request (see its message). " + KEPT_FOR_RETRY,
    "NotImplemented": (
        "the store does not implement a header this request carries (S3's answer to a header it does not "
        "support); leave out the argument it does not support (storage_class, tags, acl, encryption). " + KEPT_FOR_RETRY
    ),
}


def is_precondition_failure(error: BaseException) -> bool:
    """Whether S3 refused the request because a condition (If-None-Match, If-Match) did not hold: HTTP 412
    whatever the code, or the code PreconditionFailed (for a status the caller did not keep)."""
    if isinstance(error, S3UploadError):
        return error.status == PRECONDITION_FAILED_STATUS or error.code in ("PreconditionFailed", "412")
    return False


#: Words by which a store's 400 says its own backend was busy, not that the request was wrong (Swift's s3api
#: answers a Complete whose segment check met an overloaded object server "InvalidRequest: .../25: 503
#: Service Unavailable"): no retry mode retries a 400, so Complete is sent again after a pause.
_BUSY_WORDS = ("service unavailable", "slowdown", "slow down")


def is_busy_store_refusal(error: BaseException) -> bool:
    """Whether a 400 InvalidRequest carries a busy backend (503) in its message: worth sending again."""
    if not isinstance(error, S3UploadError) or error.code != "InvalidRequest":
        return False
    text = f"{error.reason or ''} {error}".lower()
    return any(word in text for word in _BUSY_WORDS)


def error_hint(code: str, status: int | None = None, *, checksum_algorithm: str | None = "unknown") -> str | None:
    """What ``code`` (with HTTP ``status``) means and what to do, true for the arguments given.

    A 412 is a failed precondition whatever its code says. ``checksum_algorithm``: the upload's (None:
    Content-MD5 only); advice to set it to None is left out when it already was None. The default
    ("unknown") keeps that advice, for callers that do not know the upload's arguments.
    """
    if status == PRECONDITION_FAILED_STATUS:
        return _PRECONDITION_HINT
    if checksum_algorithm is None and code in _HINTS_WITHOUT_CHECKSUMS:
        return _HINTS_WITHOUT_CHECKSUMS[code]
    return ERROR_HINTS.get(code)


def s3_error(
    error: ClientError,
    *,
    operation: str,
    bucket: str,
    key: str,
    upload_id: str | None,
    checksum_algorithm: str | None = "unknown",
) -> S3UploadError:
    """Turn a botocore ClientError into an S3UploadError whose message names the upload and the fix.

    ``checksum_algorithm``: the upload's, so that the hint never advises what was already done.
    """
    details = error.response.get("Error", {})
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = str(details.get("Code") or status or "Unknown")
    reason = details.get("Message") or str(error)
    hint = error_hint(code, status, checksum_algorithm=checksum_algorithm)
    where = f"s3://{bucket}/{key}" + (f" (UploadId {upload_id})" if upload_id else "")
    message = f"{operation} failed for {where}: {code}: {reason}"
    if hint:
        message += f". {hint[0].upper()}{hint[1:]}"
    return S3UploadError(
        message,
        code=code,
        operation=operation,
        bucket=bucket,
        key=key,
        upload_id=upload_id,
        status=status,
        reason=reason,
    )


def error_code(error: BaseException) -> str | None:
    """S3's error code of a ClientError or S3UploadError, else None."""
    if isinstance(error, S3UploadError):
        return error.code
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code"))
    return None


class CommandFailedError(MultipartUploadError):
    """The command whose output was being uploaded failed; nothing was committed."""


class UploadNotRecordedError(MultipartUploadError):
    """The UploadId could not be recorded where the next try looks for it: the upload is aborted rather
    than kept with nothing pointing at it."""
