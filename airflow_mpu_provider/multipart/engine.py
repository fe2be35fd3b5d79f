"""The upload engine: a file to one S3 object, parts in parallel, resumable, verified. No Airflow here.

    engine = FileUploadEngine(client, bucket="b", key="dumps/db.sql", source=FileSource(path),
                          plan=plan_parts(size), options=UploadOptions())
    result = engine.run(resume_upload_id=upload_id_from_an_earlier_try)

Memory stays bounded whatever the file size: each worker holds one part at a time, and the number
of workers is capped so that workers x part size stays within ``max_buffer_bytes`` (a single part
larger than that is the one exception: then one part at a time is the bound). The part bytes held
are counted as they are read and released, and the peak is reported as ``peak_buffer_bytes``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from airflow_mpu_provider.multipart.bandwidth import BandwidthLimit, bandwidth_limit, meter_only_what_is_sent
from airflow_mpu_provider.multipart.buffers import BufferBudget
from airflow_mpu_provider.multipart.compare import ObjectComparison, compare_object
from airflow_mpu_provider.multipart.errors import (
    NOT_RESUMABLE_CODES,
    IntegrityError,
    InvalidUploadRequest,
    S3UploadError,
    SourceChangedError,
    UploadCancelledError,
    error_code,
)
from airflow_mpu_provider.multipart.full_object import (
    COMPOSITE,
    FULL_OBJECT,
    FULL_OBJECT_ALGORITHMS,
    checksum_type_mismatch,
    complete_refuses_type,
    create_may_refuse_type,
    describe_whole_file,
    full_object_checksum,
    reported_checksum,
    resolve_checksum_type,
    stored_checksum_type,
)
from airflow_mpu_provider.multipart.integrity import (
    DEFAULT_CHECKSUM_ALGORITHM,
    PartDigest,
    checksum_field,
    composite_checksum,
    composite_matches,
    digest_part,
    etag_is_md5_for_args,
    multipart_etag,
)
from airflow_mpu_provider.multipart.parts import PartRecord
from airflow_mpu_provider.multipart.plan import Part, PartPlan
from airflow_mpu_provider.multipart.progress import DEFAULT_PROGRESS_INTERVAL, ProgressReporter
from airflow_mpu_provider.multipart.resume import LEFT_ALONE_HINT, FoundUpload, check_plan_fits, review_stored_part
from airflow_mpu_provider.multipart.schedule import UploadPaused, UploadSchedule
from airflow_mpu_provider.multipart.sources import FileSource
from airflow_mpu_provider.multipart.units import GiB, format_bytes
from airflow_mpu_provider.multipart.upload import MultipartUpload, head_object

#: Parts sent at once; chosen from benchmarks/bench_upload.py.
DEFAULT_CONCURRENCY = 8
#: Upper bound on part bytes held in memory at once (workers are reduced for very large parts).
DEFAULT_MAX_BUFFER_BYTES = 1 * GiB

#: CompleteMultipartUpload's answers when IfNoneMatch="*" finds an object at the key.
_PRECONDITION_FAILED = frozenset({"PreconditionFailed", "412"})

#: Errors after which keeping the upload for a retry makes no sense: the retry could not use it.
_NOT_RESUMABLE = (SourceChangedError, IntegrityError, UploadCancelledError, InvalidUploadRequest)
#: (S3 error codes: defined next to the hints that tell users what happens after them.)
_NOT_RESUMABLE_CODES = NOT_RESUMABLE_CODES


def upload_stays_usable(error: BaseException) -> bool:
    """Whether, after ``error``, a later run could still continue the upload (so keeping it makes sense).

    A timeout (Airflow's AirflowTaskTimeout) counts as usable like any other interruption; a cancel,
    an interpreter exit, a changed source or a refused request does not.
    """
    if isinstance(error, (KeyboardInterrupt, SystemExit, *_NOT_RESUMABLE)):
        return False
    return error_code(error) not in _NOT_RESUMABLE_CODES


@dataclass(frozen=True)
class UploadOptions:
    """How to upload; every field has a default that works up to S3's largest object."""

    concurrency: int = DEFAULT_CONCURRENCY
    max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES
    #: S3 checksum sent with every part; None sends Content-MD5 only (for stores without checksums).
    checksum_algorithm: str | None = DEFAULT_CHECKSUM_ALGORITHM
    #: The object checksum: "FULL_OBJECT" (one CRC of the whole file, combined from the part CRCs) or
    #: "COMPOSITE" (a checksum of the part checksums). None: FULL_OBJECT for CRC32/CRC32C/CRC64NVME,
    #: COMPOSITE for SHA1/SHA256. A store that refuses FULL_OBJECT gets COMPOSITE, with a warning.
    checksum_type: str | None = None
    #: CreateMultipartUpload arguments: ServerSideEncryption, SSEKMSKeyId, StorageClass, Metadata, ...
    extra_args: Mapping[str, Any] = field(default_factory=dict)
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL
    #: False: complete only if the key holds no object (IfNoneMatch="*"), so that a run that started
    #: after the caller checked the key cannot be overwritten by this one.
    overwrite: bool = True
    #: Cap in bytes per second on all parts together (like s3transfer's ``TransferConfig.max_bandwidth``);
    #: None: as fast as the link goes. Or a timetable (``windows.BandwidthTimetable``, or a dict such as
    #: ``{"08:00": 4 * MiB, "23:00": None}`` read in UTC), switched while the upload runs.
    max_bandwidth: Any = None
    #: When a file upload may send (``windows.UploadWindow``, or a string such as "22:00-06:00" read in UTC);
    #: None: any time. When it closes, no new part starts and ``run`` raises ``UploadPaused`` (upload kept).
    upload_window: Any = None
    #: When the upload should be done (an aware datetime, "HH:MM", an ISO string or a timedelta): a warning
    #: as soon as the projection at the current rate says it cannot be (``schedule.py``).
    finish_by: Any = None

    def workers_for(self, part_size: int, *, held_by_reader: int = 0) -> int:
        """Parts of ``part_size`` that may be in flight at once: as many as fit in ``max_buffer_bytes``
        beside the ``held_by_reader`` parts a reader holds (a stream reads the next part while others are
        sent), at most ``concurrency`` and never fewer than one, so that huge parts still upload.
        """
        fit = self.max_buffer_bytes // max(part_size, 1) - held_by_reader
        return max(1, min(self.concurrency, fit))


@dataclass
class UploadResult:
    """What was uploaded; JSON-able through ``to_dict`` (it becomes the task's return value)."""

    bucket: str
    key: str
    upload_id: str
    etag: str
    size: int
    part_size: int
    parts: int
    parts_sent: int
    parts_resumed: int
    bytes_sent: int
    bytes_resumed: int
    seconds: float
    checksum: str | None = None
    checksum_algorithm: str | None = None
    version_id: str | None = None
    #: "FULL_OBJECT" (``checksum`` is the CRC of the whole file) or "COMPOSITE" (``value-N``).
    checksum_type: str | None = None
    #: The most part bytes this run held in memory at once (<= max_buffer_bytes, or one part if larger).
    peak_buffer_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def result_for_existing_object(
    comparison: ObjectComparison,
    *,
    bucket: str,
    key: str,
    plan: PartPlan,
    checksum_algorithm: str | None,
    started: float,
    upload_id: str = "",
) -> UploadResult:
    """The result of a try that found its work already done: the object holds exactly the file."""
    head = comparison.head
    return UploadResult(
        bucket=bucket,
        key=key,
        upload_id=upload_id,
        etag=str(head.get("ETag", "")).strip('"'),
        size=plan.size,
        part_size=plan.part_size,
        parts=plan.count,
        parts_sent=0,
        parts_resumed=0,
        bytes_sent=0,
        bytes_resumed=0,
        seconds=round(time.monotonic() - started, 3),
        checksum=head.get(checksum_field(checksum_algorithm)) if checksum_algorithm else None,
        checksum_algorithm=checksum_algorithm,
        version_id=head.get("VersionId"),
        checksum_type=reported_checksum(head, checksum_algorithm)[1] if checksum_algorithm else None,
    )


def _completed_object_proof(
    head: Mapping[str, Any],
    size: int,
    expected_etag: str | None,
    algorithm: str | None,
    expected_checksum: str | None,
    expected_whole: str | None = None,
) -> str | None:
    """What shows that the object at the key is the one our parts make (None: nothing does).

    The size must agree, and then the multipart ETag (parts sent with their MD5s), the whole-file
    checksum (FULL_OBJECT) or the composite checksum (stores that echo checksums, AWS among them:
    later parts then carry no MD5).
    """
    if head.get("ContentLength") != size:
        return None
    if expected_etag is not None and head.get("ETag") == expected_etag:
        return "size and ETag"
    reported = str(head.get(checksum_field(algorithm)) or "") if algorithm else ""
    if expected_whole and reported == expected_whole:
        return f"size and {algorithm} full-object checksum"
    if composite_matches(reported, expected_checksum):
        return f"size and {algorithm} composite checksum"
    return None


class BaseUploadEngine:
    """What every upload shares, whatever the bytes come from: create, send a part, complete and
    verify, abort, cancel. ``run`` once per instance, ``cancel`` from any thread."""

    def __init__(
        self,
        client: Any,
        *,
        bucket: str,
        key: str,
        description: str,
        options: UploadOptions = UploadOptions(),
        log: logging.Logger | None = None,
        on_upload_started: Callable[[str], None] | None = None,
        abort_client: Any | None = None,
    ) -> None:
        """``on_upload_started(upload_id)`` runs as soon as the upload to send parts to is known
        (created, or reopened for resume): the place to record the UploadId durably.

        ``abort_client``: a second client for the abort ``cancel`` starts in a thread, with its own
        connection pool so that it never waits on the parts' connections (default: ``client``); it
        should give up quickly (short timeouts, few attempts): ``run`` aborts again anyway.
        """
        self.client = client
        self.abort_client = abort_client if abort_client is not None else client
        self.bucket = bucket
        self.key = key
        self.description = description
        self.options = options
        self.log = log or logging.getLogger(__name__)
        self.on_upload_started = on_upload_started
        self.upload: MultipartUpload | None = None
        #: Part bytes in memory, counted where parts are read and released (peak -> peak_buffer_bytes).
        self.buffers = BufferBudget(options.max_buffer_bytes)
        #: The window, bandwidth timetable and deadline of this run (None: none of them); see schedule.py.
        self.schedule = UploadSchedule.for_options(options, self.log)
        #: The bandwidth every part of this run draws from (None: no cap); checked here, before any request.
        self.bandwidth: BandwidthLimit | None = (
            self.schedule.bandwidth
            if self.schedule is not None and self.schedule.timetable is not None
            else bandwidth_limit(options.max_bandwidth)
        )
        if self.bandwidth is not None:
            meter_only_what_is_sent(client)
        #: Set when a failed run kept its upload for a later run to resume (rather than aborting it).
        self.kept_for_resume = False
        #: FULL_OBJECT, COMPOSITE or None (no S3 checksum); FULL_OBJECT turns COMPOSITE if the store refuses it.
        self.checksum_type = resolve_checksum_type(options.checksum_type, options.checksum_algorithm)
        #: The object's checksum and its type once completed and checked (for the result).
        self._object_checksum: tuple[str | None, str | None] = (None, None)
        self._cancelled = threading.Event()
        self._stop = threading.Event()
        self._early_abort: threading.Thread | None = None

    # -- control ------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop sending and start aborting the upload; ``run`` then raises UploadCancelledError.

        Safe from a signal handler (Airflow calls ``on_kill`` from its SIGTERM handler, in the main
        thread, which may hold a lock of the client's connection pool): no network I/O here, only
        events and a thread that aborts through ``abort_client``. Parts still in flight may survive
        that first abort, so ``run`` aborts again once its workers have stopped, and does not wait
        for this one.
        """
        self._cancelled.set()
        self._stop.set()
        upload = self.upload
        if upload is not None and upload.upload_id and self._early_abort is None:
            self._early_abort = threading.Thread(
                target=self._abort_early, args=(upload,), name="mpu-abort-on-cancel", daemon=True
            )
            self._early_abort.start()

    def _abort_early(self, upload: MultipartUpload) -> None:
        try:
            MultipartUpload(
                self.abort_client,
                upload.bucket,
                upload.key,
                upload_id=upload.upload_id,
                checksum_algorithm=upload.checksum_algorithm,
                extra_args=upload.extra_args,
            ).abort()
        except Exception as e:  # run() aborts again once its workers have stopped
            self.log.warning("Abort on cancel failed; aborting again once the parts in flight stopped: %s", e)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _raise_if_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise UploadCancelledError(
                f"upload of {self.description} to s3://{self.bucket}/{self.key} was cancelled and aborted"
            )

    def _create(self, what: str) -> str:
        self.upload = MultipartUpload(
            self.client,
            self.bucket,
            self.key,
            checksum_algorithm=self.options.checksum_algorithm,
            extra_args=self.options.extra_args,
            # COMPOSITE is S3's default for every algorithm that has it: not sent, as before types existed.
            checksum_type=FULL_OBJECT if self.checksum_type == FULL_OBJECT else None,
        )
        try:
            upload_id = self.upload.create()
        except S3UploadError as e:
            if self.upload.checksum_type is None or not create_may_refuse_type(e.code):
                raise
            self.upload.checksum_type = None  # try once without it: if that works, the type was refused
            upload_id = self.upload.create()
            self._fall_back_to_composite("CreateMultipartUpload", e)
        self.log.info(
            "Started multipart upload %s: %s to s3://%s/%s, %s",
            upload_id,
            self.description,
            self.bucket,
            self.key,
            what,
        )
        if self.on_upload_started is not None:
            self.on_upload_started(upload_id)
        return upload_id

    def _put(self, number: int, data: bytes) -> PartRecord:
        """Hash and send one part; its record carries the part's MD5 when one was computed."""
        assert self.upload is not None
        algorithm = self.options.checksum_algorithm
        # Until the store proves it echoes checksums, parts also carry Content-MD5 so that they (and the
        # object's ETag) can be verified; moto and many S3-compatible stores report only ETags.
        with_md5 = algorithm is None or not self.upload.store_echoes_checksums
        digest = digest_part(number, data, algorithm=algorithm, with_md5=with_md5)
        return self.upload.put_part(number, data, digest, cancel=self._stop, throttle=self.bandwidth)

    def _cap_note(self) -> str:
        """For the log: the bandwidth cap, if there is one."""
        if self.bandwidth is None:
            return ""
        return f", at most {format_bytes(self.bandwidth.rate)}/s together (max_bandwidth)"

    def _result(
        self,
        response: dict[str, Any],
        *,
        size: int,
        part_size: int,
        parts: int,
        sent: tuple[int, int],
        resumed: tuple[int, int],
        started: float,
    ) -> UploadResult:
        algorithm = self.options.checksum_algorithm
        assert self.upload is not None
        checksum, checksum_type = self._object_checksum
        if checksum is None and algorithm:
            checksum, checksum_type = reported_checksum(response, algorithm)
        return UploadResult(
            bucket=self.bucket,
            key=self.key,
            upload_id=self.upload.upload_id or "",
            etag=str(response.get("ETag", "")).strip('"'),
            size=size,
            part_size=part_size,
            parts=parts,
            parts_sent=sent[0],
            parts_resumed=resumed[0],
            bytes_sent=sent[1],
            bytes_resumed=resumed[1],
            seconds=round(time.monotonic() - started, 3),
            checksum=checksum,
            checksum_algorithm=algorithm,
            version_id=response.get("VersionId"),
            peak_buffer_bytes=self.buffers.peak,
            checksum_type=checksum_type if algorithm else None,
        )

    def _fall_back_to_composite(self, operation: str, error: S3UploadError) -> None:
        """The store refused the full-object checksum: go on without it, and say so once."""
        self.checksum_type = COMPOSITE
        if operation == "CreateMultipartUpload":
            outcome = "the upload was created without it and gets a COMPOSITE checksum (of the part checksums)"
        else:
            outcome = (
                "the upload was completed without it; the object's checksum is the one the store computes "
                "(COMPOSITE where full-object checksums are not supported)"
            )
        self.log.warning(
            "The store refused a full-object (FULL_OBJECT) %s checksum at %s (%s: %s): %s, which a restore cannot "
            "check with a plain CRC tool. s3://%s/%s is still verified. Set checksum_type='COMPOSITE' for this "
            "store to skip the attempt.",
            self.options.checksum_algorithm,
            operation,
            error.code,
            error,
            outcome,
            self.bucket,
            self.key,
        )

    def _combined_crc(self, parts: list[PartRecord]) -> str | None:
        """The whole-file CRC combined from the parts' CRCs and sizes, or None where there is none (SHA
        algorithms, parts without checksums). Sent with a FULL_OBJECT Complete; for a COMPOSITE upload it
        is what a store that made the object FULL_OBJECT unasked reports."""
        algorithm = self.options.checksum_algorithm
        if algorithm not in FULL_OBJECT_ALGORITHMS or not all(p.checksum for p in parts):
            return None
        return full_object_checksum(algorithm, [(p.checksum, p.size) for p in parts if p.checksum])

    def _complete(self, parts: list[PartRecord], expected_size: int) -> dict[str, Any]:
        """CompleteMultipartUpload, then prove the object is the source: size, and ETag or checksum.

        A FULL_OBJECT upload combines the parts' CRCs into the whole file's, which is sent with Complete
        and compared with what the store reports.
        """
        assert self.upload is not None
        md5s = [p.md5 for p in parts]
        algorithm = self.options.checksum_algorithm
        expected_etag = None
        if all(m is not None for m in md5s) and not self._etag_is_not_md5():
            expected_etag = multipart_etag(m for m in md5s if m is not None)
        expected_checksum = None
        checksums = [p.checksum for p in parts]
        if algorithm and all(checksums):
            expected_checksum = composite_checksum(algorithm, [c for c in checksums if c])
        whole = self._combined_crc(parts) if self.checksum_type == FULL_OBJECT else None
        try:
            response = self._complete_call(parts, whole)
        except S3UploadError as e:
            if e.code in _PRECONDITION_FAILED:
                return self._object_appeared(e)
            # A retried Complete whose first attempt succeeded gets NoSuchUpload: check the object.
            if e.code != "NoSuchUpload" or (expected_etag is None and expected_checksum is None):
                raise
            try:
                head = self._head(with_checksum=True)
            except S3UploadError:
                raise e from None
            proof = _completed_object_proof(head, expected_size, expected_etag, algorithm, expected_checksum, whole)
            if proof is None:
                raise
            self.log.warning(
                "CompleteMultipartUpload answered NoSuchUpload, but the object is complete and matches (%s): "
                "an earlier attempt of the call succeeded and its answer was lost.",
                proof,
            )
            response = head
        answered = response.get(checksum_field(algorithm)) if algorithm else None
        # Some stores (moto) answer Complete without the object's checksum: HeadObject then reports it.
        head = self._head(
            response.get("VersionId"), with_checksum=whole is not None or bool(expected_checksum and not answered)
        )
        # An encrypted object's ETag is no MD5; the Complete and HeadObject answers say so even when
        # no part did (every part resumed) and the operator's arguments could not (bucket-default KMS).
        self.upload.note_encryption(response)
        self.upload.note_encryption(head)
        if not self.upload.etags_are_md5:
            expected_etag = None
        problems = []
        if head.get("ContentLength") != expected_size:
            problems.append(f"size is {head.get('ContentLength')} bytes, expected {expected_size}")
        etag = response.get("ETag")
        if expected_etag is not None and etag != expected_etag:
            problems.append(f"ETag is {etag}, expected {expected_etag} from the parts' MD5s")
        reported = answered or (head.get(checksum_field(algorithm)) if algorithm else None)
        checksum_verified = composite_matches(reported, expected_checksum)
        whole_verified = False
        if expected_checksum and reported and not checksum_verified:
            if "-" in reported:
                problems.append(f"checksum {algorithm} is {reported}, expected {expected_checksum}")
            elif whole is None:
                # A store reporting the value without "-N" (moto): the composite's value, or the whole file's
                # CRC if the store made the object FULL_OBJECT unasked; anything else is not these bytes.
                whole_verified = reported == self._combined_crc(parts)
                if whole_verified:
                    self._object_checksum = (reported, FULL_OBJECT)
                else:
                    problems.append(
                        f"checksum {algorithm} is {reported}, expected the composite {expected_checksum} "
                        "(or the value without its -N)"
                    )
        if whole is not None and algorithm:
            whole_verified = self._check_whole_file(whole, expected_checksum, response, head, problems)
        if problems:
            raise IntegrityError(
                f"s3://{self.bucket}/{self.key} (UploadId {self.upload.upload_id}) does not match "
                f"{self.description}: {'; '.join(problems)}. The object is corrupt: do not use it; "
                "re-run the task with replace=True."
            )
        if not whole_verified and checksum_verified:
            self._object_checksum = (expected_checksum, COMPOSITE)
        verified = [
            "size",
            *(["ETag"] if expected_etag else []),
            *([f"{algorithm} checksum"] if checksum_verified else []),
            *([f"{algorithm} full-object checksum"] if whole_verified else []),
        ]
        self.log.info(
            "Completed s3://%s/%s: %s, ETag %s; verified %s.",
            self.bucket,
            self.key,
            format_bytes(expected_size),
            etag,
            ", ".join(verified),
        )
        if whole is not None and algorithm:
            self.log.info(
                "%s%s", describe_whole_file(algorithm, whole), "" if whole_verified else " (computed locally)"
            )
        if expected_etag is None and not checksum_verified and not whole_verified:
            self.log.warning(
                "s3://%s/%s: only the size could be verified; the store gives nothing else to verify the object "
                "with (%s, and no %s object checksum in its answer).",
                self.bucket,
                self.key,
                "its ETag is not an MD5 under SSE-KMS/SSE-C" if not self.upload.etags_are_md5 else "no MD5 ETag",
                algorithm or "S3",
            )
        return response

    def _check_whole_file(
        self,
        whole: str,
        composite: str | None,
        response: Mapping[str, Any],
        head: Mapping[str, Any],
        problems: list[str],
    ) -> bool:
        """Compare the whole-file CRC with the store's (Complete's answer, else HeadObject's); True if equal.

        A store that made the object COMPOSITE anyway (it ignored ChecksumType) is the fallback, warned
        about once; one that reports no object checksum leaves ours unconfirmed (computed locally).
        """
        algorithm = self.options.checksum_algorithm
        assert algorithm is not None
        value, kind = reported_checksum(response, algorithm)
        if value is None:
            value, kind = reported_checksum(head, algorithm)
        if value is None:
            self._object_checksum = (whole, FULL_OBJECT)
            return False
        if kind is None and value != whole and composite and value == composite.split("-")[0]:
            kind = COMPOSITE  # a composite value without its "-N" (some stores leave it out)
        if kind == COMPOSITE:
            if self.checksum_type == FULL_OBJECT:
                self.log.warning(
                    "The store ignored ChecksumType=FULL_OBJECT: s3://%s/%s has a COMPOSITE %s checksum (%s), not the "
                    "whole-file one. Set checksum_type='COMPOSITE' for this store.",
                    self.bucket,
                    self.key,
                    algorithm,
                    value,
                )
                self.checksum_type = COMPOSITE
            return False
        if value != whole:
            problems.append(f"full-object checksum {algorithm} is {value}, expected {whole} from the parts' CRCs")
            return False
        self._object_checksum = (whole, FULL_OBJECT)
        return True

    def _complete_call(self, parts: list[PartRecord], whole: str | None = None) -> dict[str, Any]:
        """CompleteMultipartUpload, conditional on the key being free unless ``overwrite``, with the
        whole-file checksum of a FULL_OBJECT upload.

        A store that does not implement the condition (NotImplemented) is completed without it, with
        a warning: the caller's existence check before the upload started is then the only guard. A store
        that refuses the full-object checksum is completed without it (COMPOSITE), with a warning; that
        is tried first, as the newer feature is the likelier one to be missing.
        """
        assert self.upload is not None
        conditions: dict[str, Any] = {} if self.options.overwrite else {"IfNoneMatch": "*"}
        algorithm = self.options.checksum_algorithm
        checksum: dict[str, Any] = {}
        if whole is not None and algorithm:
            checksum = {"ChecksumType": FULL_OBJECT, checksum_field(algorithm): whole}
        while True:
            try:
                return self.upload.complete(parts, **conditions, **checksum)
            except S3UploadError as e:
                if checksum and complete_refuses_type(e.code, str(e)):
                    self._fall_back_to_composite("CompleteMultipartUpload", e)
                    checksum = {}
                    continue
                if not conditions or e.code not in ("NotImplemented", "501"):
                    raise
                self.log.warning(
                    "The store does not support a conditional CompleteMultipartUpload (%s); completing without it. "
                    "An object another run wrote to s3://%s/%s since the upload started would be replaced.",
                    e.code,
                    self.bucket,
                    self.key,
                )
                conditions = {}

    def _object_appeared(self, error: S3UploadError) -> dict[str, Any]:
        """Complete was refused because an object appeared at the key meanwhile (overwrite=False).

        If it is exactly our source (another run uploaded the same bytes, or our own earlier attempt
        of this Complete succeeded), the work is done: our upload is aborted and the object's answer
        returned. Otherwise it is never replaced: ObjectExists (and the upload is aborted as ours).
        """
        assert self.upload is not None
        comparison = self._compare_with_source()
        if comparison is None or not comparison.matches:
            why = comparison.detail if comparison is not None else "a stream cannot be compared with it"
            raise S3UploadError(
                f"s3://{self.bucket}/{self.key} was written by someone else while this upload ran, and it is not "
                f"{self.description} ({why}); it was not replaced. Set replace=True to overwrite it, or use "
                "another key.",
                code="ObjectExists",
                operation="CompleteMultipartUpload",
                bucket=self.bucket,
                key=self.key,
                upload_id=self.upload.upload_id,
            ) from error
        self.log.info(
            "s3://%s/%s appeared while this upload ran and already holds exactly %s (%s): nothing to replace; "
            "aborting upload %s.",
            self.bucket,
            self.key,
            self.description,
            comparison.detail,
            self.upload.upload_id,
        )
        self.upload.abort()
        return comparison.head

    def _compare_with_source(self) -> ObjectComparison | None:
        """The object at the key against the source, where the source can be read again (None: it cannot)."""
        return None

    def _collect(
        self,
        pending: set[Future[PartRecord]],
        records: dict[int, PartRecord],
        *,
        until: int,
        room_for: int = 0,
    ) -> set[Future[PartRecord]]:
        """Wait until at most ``until`` parts are pending (and, with ``room_for``, a part of that many
        bytes fits beside them in the buffer budget), filing finished ones into ``records``.

        The short wait keeps the main thread responsive to signals (on_kill) and cancel(); the first
        failed part raises here, and the caller stops the rest.
        """
        while pending and (len(pending) > until or (room_for and not self.buffers.fits(room_for))):
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            self._raise_if_cancelled()
            for future in done:
                record = future.result()
                if record is not None:  # None: a part the closed upload window did not start
                    records[record.number] = record
        return pending

    def _etag_is_not_md5(self) -> bool:
        """Known not to be MD5s: from the arguments, or from any S3 answer about this upload so far."""
        if self.upload is not None:
            return not self.upload.etags_are_md5
        return not etag_is_md5_for_args(self.options.extra_args)

    def _head(self, version_id: str | None = None, *, with_checksum: bool = False) -> dict[str, Any]:
        """HeadObject of the target, with the upload's per-request arguments (see ``head_object``)."""
        return head_object(
            self.client,
            self.bucket,
            self.key,
            extra_args=self.options.extra_args,
            version_id=version_id,
            with_checksum=with_checksum,
        )

    def _after_failure(self, error: BaseException, keep_on_failure: bool) -> None:
        assert self.upload is not None
        if isinstance(error, UploadPaused):  # the window closed: kept, whatever keep_on_failure says
            self.kept_for_resume = True
            return
        if keep_on_failure and upload_stays_usable(error) and not self.cancelled:
            self.kept_for_resume = True
            self.log.warning(
                "Upload failed; keeping multipart upload %s of s3://%s/%s so that the retry resumes it.",
                self.upload.upload_id,
                self.bucket,
                self.key,
            )
            return
        try:
            self.upload.abort()
        except Exception as abort_error:  # the original error matters more; say what is left behind
            self.log.error(
                "Could not abort multipart upload %s of s3://%s/%s after a failure (%s); abort it by hand or "
                "let S3AbortStaleUploadsOperator clean it up.",
                self.upload.upload_id,
                self.bucket,
                self.key,
                abort_error,
            )


class FileUploadEngine(BaseUploadEngine):
    """Uploads one file (a ``FileSource`` cut by a ``PartPlan``), resuming an earlier upload of it."""

    def __init__(
        self,
        client: Any,
        *,
        bucket: str,
        key: str,
        source: FileSource,
        plan: PartPlan,
        options: UploadOptions = UploadOptions(),
        log: logging.Logger | None = None,
        on_upload_started: Callable[[str], None] | None = None,
        abort_client: Any | None = None,
    ) -> None:
        if plan.size != source.size:
            raise InvalidUploadRequest(f"the plan is for {plan.size:,} bytes but the source has {source.size:,}")
        super().__init__(
            client,
            bucket=bucket,
            key=key,
            description=source.description,
            options=options,
            log=log,
            on_upload_started=on_upload_started,
            abort_client=abort_client,
        )
        self.source = source
        self.plan = plan

    # -- the run ------------------------------------------------------------------------------

    def run(
        self,
        *,
        resume_upload_id: str | None = None,
        keep_on_failure: bool = False,
        adopt: FoundUpload | None = None,
    ) -> UploadResult:
        """Upload everything that is not already (verifiably) in S3, complete, and verify the object.

        ``resume_upload_id`` is *ours* (an earlier run of this same upload created it): it is
        continued, or aborted if it cannot be. If it no longer exists and the object already holds
        exactly the file (that run completed it, and its success was lost), nothing is sent.
        ``adopt`` is a *found* upload (``find_adoptable_upload``): it is continued only if every stored
        part verifies against the local bytes, and otherwise left alone, never aborted.

        On failure the upload is aborted, unless ``keep_on_failure`` is set and the error leaves the
        upload usable for a later ``run(resume_upload_id=...)`` (``kept_for_resume`` then says so).
        """
        started = time.monotonic()
        if self.schedule is not None and not self.schedule.window_open():  # before anything is created
            raise self._paused(resume_upload_id or "", None)
        workers = self.options.workers_for(self.plan.part_size)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mpu-part") as pool:
            try:
                opened = self._resume_or_create(resume_upload_id, adopt, pool)
                if isinstance(opened, ObjectComparison):
                    return result_for_existing_object(
                        opened,
                        bucket=self.bucket,
                        key=self.key,
                        plan=self.plan,
                        checksum_algorithm=self.options.checksum_algorithm,
                        started=started,
                        upload_id=resume_upload_id or "",
                    )
                result = self._upload_and_complete(opened, pool, workers, started)
            except BaseException as error:
                self._stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                if self.upload is not None and self.upload.upload_id:  # only ours: created, recorded or adopted
                    self._after_failure(error, keep_on_failure)
                raise
        return result

    def _resume_or_create(
        self, resume_upload_id: str | None, adopt: FoundUpload | None, pool: ThreadPoolExecutor
    ) -> dict[int, PartRecord] | ObjectComparison:
        """The verified parts of the upload to continue, or ``{}`` after creating one; or, when our
        earlier upload is gone because it became the object, the comparison that proves it."""
        opened: dict[int, PartRecord] | ObjectComparison | None = None
        if resume_upload_id:
            opened = self._reopen(resume_upload_id, pool)
        elif adopt is not None:
            opened = self._adopt(adopt, pool)
        if opened is not None:
            return opened
        self._create(
            f"{format_bytes(self.plan.size)} in {self.plan.count} parts of {format_bytes(self.plan.part_size)}"
        )
        return {}

    def _compare_with_source(self) -> ObjectComparison | None:
        return compare_object(
            self.client,
            self.bucket,
            self.key,
            self.source,
            extra_args=self.options.extra_args,
            part_size_hint=self.plan.part_size,
            cancel=self._stop,
        )

    def _upload_for(self, upload_id: str) -> MultipartUpload:
        return MultipartUpload(
            self.client,
            self.bucket,
            self.key,
            upload_id=upload_id,
            checksum_algorithm=self.options.checksum_algorithm,
            extra_args=self.options.extra_args,
        )

    def _reopen(self, upload_id: str, pool: ThreadPoolExecutor) -> dict[int, PartRecord] | ObjectComparison | None:
        """Continue our earlier upload (re-sending parts that differ), or abort it if it cannot fit."""
        earlier = self._upload_for(upload_id)
        self.upload = earlier
        try:
            stored, stored_algorithm = earlier.list_parts()
        except S3UploadError as e:
            if e.code != "NoSuchUpload":
                raise
            self.upload = None  # gone: nothing of ours exists any more
            return self._already_uploaded(upload_id)
        reason = check_plan_fits(stored, self.plan, stored_algorithm, self.options.checksum_algorithm)
        reason = reason or checksum_type_mismatch(
            stored_checksum_type(earlier.listed_checksum_type, stored_algorithm), self.checksum_type
        )
        if reason is not None:
            self.log.warning(
                "Not resuming upload %s of s3://%s/%s: %s. Aborting it and starting afresh.",
                upload_id,
                self.bucket,
                self.key,
                reason,
            )
            earlier.abort()
            self.upload = None
            return None
        kept, rejected = self._verify_stored(earlier, stored, pool)
        for number, why in sorted(rejected.items()):
            self.log.warning("Stored part %d will be sent again: %s.", number, why)
        self._log_resuming(kept)
        if self.on_upload_started is not None:
            self.on_upload_started(upload_id)
        return kept

    def _already_uploaded(self, upload_id: str) -> ObjectComparison | None:
        """After our upload vanished: the proof that it became the object, or None (start afresh)."""
        comparison = self._compare_with_source()
        assert comparison is not None
        if comparison.matches:
            self.log.info(
                "Upload %s no longer exists and s3://%s/%s already holds exactly %s (%s): an earlier try "
                "completed it and was stopped before it could record its success. Nothing to upload.",
                upload_id,
                self.bucket,
                self.key,
                self.description,
                comparison.detail,
            )
            return comparison
        self.log.info("Earlier upload %s no longer exists; starting a new one.", upload_id)
        return None

    def _adopt(self, found: FoundUpload, pool: ThreadPoolExecutor) -> dict[int, PartRecord] | None:
        """Continue a found upload only if every stored part is this file's bytes; else leave it alone."""
        candidate = self._upload_for(found.upload_id)
        kept, rejected = self._verify_stored(candidate, found.parts, pool)
        if rejected:
            number, why = min(rejected.items())
            self.log.warning(
                "Leaving incomplete upload %s of s3://%s/%s alone: %d of its %d parts do not verify against "
                "%s (part %d: %s); %s. Starting a new upload.",
                found.upload_id,
                self.bucket,
                self.key,
                len(rejected),
                len(found.parts),
                self.description,
                number,
                why,
                LEFT_ALONE_HINT,
            )
            return None
        self.upload = candidate
        self._log_resuming(kept)
        if self.on_upload_started is not None:
            self.on_upload_started(found.upload_id)
        return kept

    def _verify_stored(
        self, upload: MultipartUpload, stored: list[dict[str, Any]], pool: ThreadPoolExecutor
    ) -> tuple[dict[int, PartRecord], dict[int, str]]:
        """Stored parts that hold the local bytes of their range (as records), and why the others do not."""
        algorithm = self.options.checksum_algorithm
        # A whole-file CRC needs every part's CRC: where the store lists none, it is computed in the same
        # read that verifies the part's MD5.
        crcs_needed = self.checksum_type == FULL_OBJECT
        local_crcs: dict[int, str] = {}

        def digest_local(number: int, with_checksum: bool, with_md5: bool) -> PartDigest:
            self._raise_if_cancelled()
            part = self.plan.part(number)
            with self.buffers.holding(part.length):
                data = self.source.read(part.offset, part.length)
                checksum = algorithm if with_checksum or crcs_needed else None
                digest = digest_part(number, data, algorithm=checksum, with_md5=with_md5)
                del data
            if digest.checksum is not None:
                local_crcs[number] = digest.checksum
            return digest

        etags_are_md5 = upload.etags_are_md5
        reviews = {
            p["PartNumber"]: pool.submit(review_stored_part, p, algorithm, digest_local, etag_is_md5=etags_are_md5)
            for p in stored
        }
        kept: dict[int, PartRecord] = {}
        rejected: dict[int, str] = {}
        by_number = {p["PartNumber"]: p for p in stored}
        for number, review in sorted(reviews.items()):
            reason = review.result()
            if reason is not None:
                rejected[number] = reason
                continue
            record = PartRecord.from_listing(by_number[number], upload.checksum_algorithm, etag_is_md5=etags_are_md5)
            if record.checksum is None and number in local_crcs and upload.checksum_algorithm == algorithm:
                record = replace(record, checksum=local_crcs[number])  # the store lists none
            kept[number] = record
        return kept, rejected

    def _log_resuming(self, kept: dict[int, PartRecord]) -> None:
        assert self.upload is not None
        kept_bytes = sum(self.plan.part(n).length for n in kept)
        self.log.info(
            "Resuming upload %s of s3://%s/%s: %d of %d parts (%s) already uploaded and verified "
            "against the local file; %d parts to send.",
            self.upload.upload_id,
            self.bucket,
            self.key,
            len(kept),
            self.plan.count,
            format_bytes(kept_bytes),
            self.plan.count - len(kept),
        )

    def _upload_and_complete(
        self, kept: dict[int, PartRecord], pool: ThreadPoolExecutor, workers: int, started: float
    ) -> UploadResult:
        assert self.upload is not None
        missing = [p for p in self.plan if p.number not in kept]
        progress = ProgressReporter(
            total_bytes=self.plan.size,
            total_parts=self.plan.count,
            log=self.log,
            interval=self.options.progress_interval,
            label=f"s3://{self.bucket}/{self.key}",
        )
        progress.skip(sum(self.plan.part(n).length for n in kept), len(kept))
        if missing:
            self.log.info(
                "Sending %d parts (%s) with %d parallel workers%s.",
                len(missing),
                format_bytes(sum(p.length for p in missing)),
                workers,
                self._cap_note(),
            )
        records = dict(kept)
        if self.schedule is not None:
            self.schedule.begin(sum(p.length for p in missing), workers)
        with progress.ticking():  # a line every interval, even while no part finishes
            records.update(self._send(missing, pool, progress))
        self._raise_if_cancelled()
        if len(records) < self.plan.count:  # only a closed window leaves parts unsent without an error
            raise self._paused(self.upload.upload_id or "", records)
        self.source.check_unchanged()
        parts = [records[n] for n in range(1, self.plan.count + 1)]
        self.log.info("%s", progress.summary())
        response = self._complete(parts, self.plan.size)
        return self._result(
            response,
            size=self.plan.size,
            part_size=self.plan.part_size,
            parts=self.plan.count,
            sent=(len(missing), sum(p.length for p in missing)),
            resumed=(len(kept), sum(self.plan.part(n).length for n in kept)),
            started=started,
        )

    def _send(self, missing: list[Part], pool: ThreadPoolExecutor, progress: ProgressReporter) -> dict[int, PartRecord]:
        records: dict[int, PartRecord] = {}
        send = self._send_part if self.schedule is None else self._send_part_in_window
        pending = {pool.submit(send, p, progress) for p in missing}
        while pending:
            pending = self._collect(pending, records, until=0)
        return records

    def _send_part(self, part: Part, progress: ProgressReporter) -> PartRecord:
        assert self.upload is not None
        if self._stop.is_set():
            raise UploadCancelledError(f"stopped before sending part {part.number}")
        with self.buffers.holding(part.length):  # the part is alive only inside this block
            record = self._put(part.number, self.source.read(part.offset, part.length))
        self.source.check_unchanged()
        progress.advance(part.length)
        return record

    def _send_part_in_window(self, part: Part, progress: ProgressReporter) -> PartRecord | None:
        """``_send_part`` if the upload window is open when the part would start, else None (not started)."""
        assert self.schedule is not None
        if not self._stop.is_set() and not self.schedule.window_open():
            return None
        record = self._send_part(part, progress)
        self.schedule.part_sent(part.length)
        return record

    def _paused(self, upload_id: str, records: dict[int, PartRecord] | None) -> UploadPaused:
        """The outcome of a run the window stopped: what is stored (None: not looked at), what is left."""
        assert self.schedule is not None
        stored = None if records is None else sum(self.plan.part(n).length for n in records)
        paused = self.schedule.paused_outcome(
            bucket=self.bucket,
            key=self.key,
            upload_id=upload_id,
            size=self.plan.size,
            parts=self.plan.count,
            stored_bytes=stored,
            stored_parts=None if records is None else len(records),
        )
        self.log.info("%s", paused)
        return paused
