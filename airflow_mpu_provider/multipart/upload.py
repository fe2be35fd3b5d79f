"""One S3 multipart upload: the five S3 calls around a single UploadId, with S3's errors translated.

    upload = MultipartUpload(client, "bucket", "key")
    upload.create()                             # CreateMultipartUpload
    record = upload.put_part(1, data, digest)   # UploadPart; digest: checksums.digests.digest_part
    upload.complete([record])                   # CompleteMultipartUpload (or upload.abort())

The file and the stream engine drive it, parts in parallel: it keeps what the store has shown of itself
(does it echo checksums, are its ETags MD5s), the engines keep the parts' records.
Listing the incomplete uploads of a prefix is ``listing.py``'s job; how a part's bytes travel (and
stop on cancel) is ``parts/body.py``'s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from airflow_mpu_provider.multipart.checksums.digests import (
    DEFAULT_CHECKSUM_ALGORITHM,
    PartDigest,
    checksum_field,
    etag_is_md5,
    etag_is_md5_for_args,
    part_matches,
)
from airflow_mpu_provider.multipart.errors import (
    IntegrityError,
    S3UploadError,
    s3_error,
)
from airflow_mpu_provider.multipart.parts.body import SendMeter, never_retry_cancelled_parts
from airflow_mpu_provider.multipart.parts.record import PartRecord
from airflow_mpu_provider.multipart.request_args import request_args
from airflow_mpu_provider.multipart.signing import md5_spares_the_payload_hash, sign_payload_only_when_needed
from airflow_mpu_provider.multipart.sources.file_range import FileRange, part_body

if TYPE_CHECKING:
    from airflow_mpu_provider.multipart.bandwidth import BandwidthLimit

log = logging.getLogger(__name__)

#: CreateMultipartUpload arguments that describe the object (the rest of put_object's options
#: apply to single requests only). Users' ``extra_args`` are checked against this list.
OBJECT_ARGS = frozenset(
    {
        "ACL",
        "CacheControl",
        "ContentDisposition",
        "ContentEncoding",
        "ContentLanguage",
        "ContentType",
        "Expires",
        "GrantFullControl",
        "GrantRead",
        "GrantReadACP",
        "GrantWriteACP",
        "Metadata",
        "ServerSideEncryption",
        "StorageClass",
        "WebsiteRedirectLocation",
        "SSECustomerAlgorithm",
        "SSECustomerKey",
        "SSECustomerKeyMD5",
        "SSEKMSKeyId",
        "SSEKMSEncryptionContext",
        "BucketKeyEnabled",
        "RequestPayer",
        "Tagging",
        "ObjectLockMode",
        "ObjectLockRetainUntilDate",
        "ObjectLockLegalHoldStatus",
        "ExpectedBucketOwner",
    }
)


class MultipartUpload:
    """The S3 calls of one multipart upload to ``bucket``/``key``; thread-safe for parallel parts."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        *,
        upload_id: str | None = None,
        checksum_algorithm: str | None = DEFAULT_CHECKSUM_ALGORITHM,
        extra_args: Mapping[str, Any] | None = None,
        checksum_type: str | None = None,
    ) -> None:
        """``checksum_type``: sent as ChecksumType at creation; None leaves it to the store (S3: COMPOSITE,
        or FULL_OBJECT for CRC64NVME)."""
        self.client = client
        self.bucket = bucket
        self.key = key
        self.upload_id = upload_id
        self.checksum_algorithm = checksum_algorithm
        self.checksum_type = checksum_type
        #: The upload's ChecksumType as ListParts last reported it (None: not reported).
        self.listed_checksum_type: str | None = None
        self.extra_args = dict(extra_args or {})
        #: Whether the store echoes part checksums in UploadPart responses (None until a part was sent).
        #: AWS does; moto and many S3-compatible stores report only the ETag (an MD5).
        self.store_echoes_checksums: bool | None = None
        #: Whether any answer of the store showed that it knows S3 checksums: an echoed part checksum, or a
        #: checksum algorithm in CreateMultipartUpload's or ListParts' answer. Only then does Complete name
        #: the parts' checksums: a store that shows none (OpenStack Swift) may refuse them as MalformedXML.
        self.store_knows_checksums = False
        #: Whether the store's ETags are MD5s of the bytes: False once the arguments or any answer say
        #: the object is encrypted with SSE-KMS/DSSE-KMS/SSE-C (a bucket's default KMS shows only there).
        self.etags_are_md5 = etag_is_md5_for_args(self.extra_args)
        self._said_unverifiable = False
        #: Set once ``abort`` succeeded (and, unless ``confirm=False``, made sure the upload is gone).
        self.aborted = False
        #: Seconds of the quickest answer to a call so far (None: none yet): about the store's round trip,
        #: from which adaptive parallelism takes its starting count.
        self.quickest_answer: float | None = None
        #: Every part carries a Content-MD5 (plain HTTP: it spares the SHA-256 payload signature); elsewhere
        #: only until the store proves it echoes checksums.
        self.md5_on_every_part = md5_spares_the_payload_hash(client)
        sign_payload_only_when_needed(client)
        never_retry_cancelled_parts(client)

    def through(self, client: Any) -> MultipartUpload:
        """The same upload's calls through another client: the abort client (its own pool, short timeouts)
        for an abort started by a cancel while this upload's own client may be busy on another thread."""
        return MultipartUpload(
            client,
            self.bucket,
            self.key,
            upload_id=self.upload_id,
            checksum_algorithm=self.checksum_algorithm,
            extra_args=self.extra_args,
        )

    # -- the S3 calls -------------------------------------------------------------------------

    def _call(self, operation: str, method: Any, **kwargs: Any) -> dict[str, Any]:
        """One S3 call, carrying the per-request arguments (RequestPayer, SSE-C, ...) it accepts."""
        kwargs = {**request_args(self.client, operation, self.extra_args), **kwargs}
        started = time.monotonic()
        try:
            response = method(Bucket=self.bucket, Key=self.key, **kwargs)
            answered = time.monotonic() - started
            if self.quickest_answer is None or answered < self.quickest_answer:
                self.quickest_answer = answered
            return response
        except ClientError as e:
            raise s3_error(
                e,
                operation=operation,
                bucket=self.bucket,
                key=self.key,
                upload_id=self.upload_id,
                checksum_algorithm=self.checksum_algorithm,
            ) from e

    def create(self) -> str:
        args = dict(self.extra_args)
        if self.checksum_algorithm:
            args["ChecksumAlgorithm"] = self.checksum_algorithm
            if self.checksum_type:
                args["ChecksumType"] = self.checksum_type
        response = self._call("CreateMultipartUpload", self.client.create_multipart_upload, **args)
        self.note_encryption(response)
        if self.checksum_algorithm and response.get("ChecksumAlgorithm"):
            self.store_knows_checksums = True
        self.upload_id = response["UploadId"]
        return self.upload_id

    def put_part(
        self,
        number: int,
        data: bytes | bytearray | memoryview | FileRange,
        digest: PartDigest,
        *,
        cancel: threading.Event | None = None,
        throttle: BandwidthLimit | None = None,
        meter: SendMeter | None = None,
    ) -> PartRecord:
        """UploadPart; returns the part's record (with the MD5 ``digest`` holds), after checking S3's answer.

        ``throttle``: the upload's bandwidth limit, which the part's socket writes draw from; ``meter``:
        told of the body's bytes as the HTTP layer reads them (progress). ``data`` is not copied.
        """
        args: dict[str, Any] = {}
        if digest.checksum and self.checksum_algorithm:
            args[checksum_field(self.checksum_algorithm)] = digest.checksum
            # x-amz-sdk-checksum-algorithm, as every AWS SDK sends with a checksum: stores that verify and
            # echo a part's checksum only when the algorithm is named (moto, some S3-compatible stores)
            # then do, and the engine can verify later parts by their echo instead of hashing an MD5 too.
            # botocore computes nothing more: the checksum header is already there.
            args["ChecksumAlgorithm"] = self.checksum_algorithm
        if digest.md5 is not None:
            args["ContentMD5"] = digest.content_md5
        response = self._call(
            "UploadPart",
            self.client.upload_part,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=part_body(data, cancel, meter, throttle),
            ContentLength=len(data),
            **args,
        )
        if self.checksum_algorithm and digest.checksum:
            self.store_echoes_checksums = bool(response.get(self._checksum_key))
            if self.store_echoes_checksums:
                self.store_knows_checksums = True
        self.note_encryption(response)
        verdict = part_matches(digest, response, self.checksum_algorithm, etag_is_md5=self.etags_are_md5)
        if verdict is None:
            self._say_unverifiable(number)
        if verdict is False:
            raise IntegrityError(
                f"UploadPart {number} of s3://{self.bucket}/{self.key} (UploadId {self.upload_id}): the store "
                f"answered ETag {response.get('ETag')} / checksum "
                f"{response.get(checksum_field(self.checksum_algorithm)) if self.checksum_algorithm else None}, "
                f"which does not match the bytes sent (md5 {digest.md5.hex() if digest.md5 else None}, "
                f"checksum {digest.checksum})."
            )
        return self.part_record(
            number, len(data), response.get("ETag"), digest.checksum or response.get(self._checksum_key), digest.md5
        )

    def note_encryption(self, response: Mapping[str, Any]) -> None:
        """Learn from an S3 answer whether ETags are MD5s (only ever from True to False: thread-safe)."""
        if not etag_is_md5(response):
            self.etags_are_md5 = False

    def _say_unverifiable(self, number: int) -> None:
        """Log once per upload that the store's answers cannot prove the parts' bytes."""
        if self._said_unverifiable:
            return
        self._said_unverifiable = True
        why = (
            "its ETags are not MD5s (the object is encrypted with SSE-KMS or SSE-C)"
            if not self.etags_are_md5
            else "its ETags are not MD5s"
        )
        echo = f"it echoes no {self.checksum_algorithm} checksum" if self.checksum_algorithm else "no checksum is sent"
        log.warning(
            "s3://%s/%s (UploadId %s), part %d and after: the store gives nothing to verify parts with: %s and "
            "%s. The store itself checked each part's Content-MD5/checksum on receipt; after completion only "
            "the object's size can be compared.",
            self.bucket,
            self.key,
            self.upload_id,
            number,
            why,
            echo,
        )

    @property
    def _checksum_key(self) -> str:
        return checksum_field(self.checksum_algorithm) if self.checksum_algorithm else "ChecksumNone"

    def part_record(
        self, number: int, size: int, etag: str | None, checksum: str | None, md5: bytes | None = None
    ) -> PartRecord:
        """A part of this upload; its checksum is kept only when the upload uses S3 checksums."""
        return PartRecord(number, size, etag, checksum, self.checksum_algorithm, md5)

    def list_parts(self) -> tuple[list[dict[str, Any]], str | None]:
        """All parts S3 holds for this upload (paginated past 1,000) and the upload's checksum algorithm."""
        parts: list[dict[str, Any]] = []
        algorithm: str | None = None
        marker = 0
        while True:
            response = self._call(
                "ListParts",
                self.client.list_parts,
                UploadId=self.upload_id,
                PartNumberMarker=marker,
            )
            parts.extend(response.get("Parts", []))
            algorithm = response.get("ChecksumAlgorithm") or algorithm
            if algorithm or any(k.startswith("Checksum") for p in response.get("Parts", []) for k in p):
                self.store_knows_checksums = True
            self.listed_checksum_type = response.get("ChecksumType") or self.listed_checksum_type
            if not response.get("IsTruncated"):
                return parts, algorithm
            marker = int(response["NextPartNumberMarker"])

    def complete(
        self, parts: Iterable[PartRecord], *, with_checksums: bool | None = None, **conditions: Any
    ) -> dict[str, Any]:
        """CompleteMultipartUpload; ``conditions``: e.g. ``IfNoneMatch="*"`` (fail if the key holds an object).

        ``with_checksums``: name each part's checksum (None: only if the store has shown it knows checksums,
        ``store_knows_checksums``); without, the entries hold PartNumber and ETag, which every store accepts.
        """
        if with_checksums is None:
            with_checksums = self.store_knows_checksums
        ordered = [p.completion_entry(with_checksum=with_checksums) for p in sorted(parts, key=lambda p: p.number)]
        return self._call(
            "CompleteMultipartUpload",
            self.client.complete_multipart_upload,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": ordered},
            **conditions,
        )

    def abort(self, *, attempts: int = 5, confirm: bool = True) -> None:
        """Abort, then make sure the upload is gone.

        S3 documents that parts still being uploaded during an abort may survive it, so the upload is
        listed again and aborted again until S3 answers NoSuchUpload. ``confirm=False`` skips that
        check, for an upload whose parts cannot be listed (an SSE-C upload seen by a third party) and
        that nobody is writing to.
        """
        if not self.upload_id:
            return
        for attempt in range(attempts):
            try:
                self._call("AbortMultipartUpload", self.client.abort_multipart_upload, UploadId=self.upload_id)
            except S3UploadError as e:
                if e.code != "NoSuchUpload":
                    raise
            if not confirm:
                log.info("Aborted multipart upload %s of s3://%s/%s", self.upload_id, self.bucket, self.key)
                self.aborted = True
                return
            try:
                self.list_parts()
            except S3UploadError as e:
                if e.code == "NoSuchUpload":
                    log.info("Aborted multipart upload %s of s3://%s/%s", self.upload_id, self.bucket, self.key)
                    self.aborted = True
                    return
                raise
            time.sleep(0.2 * (attempt + 1))
        raise S3UploadError(
            f"multipart upload {self.upload_id} of s3://{self.bucket}/{self.key} still exists after "
            f"{attempts} aborts; abort it by hand (aws s3api abort-multipart-upload) or with a lifecycle rule.",
            code="AbortIncomplete",
            operation="AbortMultipartUpload",
            bucket=self.bucket,
            key=self.key,
            upload_id=self.upload_id,
        )


def head_object(
    client: Any,
    bucket: str,
    key: str,
    *,
    extra_args: Mapping[str, Any] | None = None,
    version_id: str | None = None,
    part_number: int | None = None,
    with_checksum: bool = False,
    if_match: str | None = None,
) -> dict[str, Any]:
    """HeadObject with the upload's per-request arguments; S3's errors as S3UploadError.

    The one HeadObject of the package: the engine's final check, the ``replace=False`` check and
    any recovery that looks at the object use it, so a requester-pays, owner-checked or SSE-C object
    is asked about the way it was written. ``part_number``: ask about that part of a multipart object
    (its size); ``with_checksum``: ChecksumMode=ENABLED, for the object's checksum; ``if_match``: an ETag the
    object must have (else S3 answers 412: another object is at the key).
    """
    args: dict[str, Any] = {"Bucket": bucket, "Key": key, **request_args(client, "HeadObject", extra_args)}
    if version_id and version_id != "null":
        args["VersionId"] = version_id
    if part_number is not None:
        args["PartNumber"] = part_number
    if with_checksum:
        args["ChecksumMode"] = "ENABLED"
    if if_match:
        args["IfMatch"] = if_match
    try:
        return client.head_object(**args)
    except ClientError as e:
        raise s3_error(e, operation="HeadObject", bucket=bucket, key=key, upload_id=None) from e
