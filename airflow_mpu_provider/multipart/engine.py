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

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from airflow_mpu_provider.multipart.adaptive_parts import AdaptiveParts, adaptive_parts_for
from airflow_mpu_provider.multipart.bandwidth import BandwidthLimit, bandwidth_limit, meter_only_what_is_sent
from airflow_mpu_provider.multipart.buffers import BufferBudget
from airflow_mpu_provider.multipart.checksums.compare import ObjectComparison, compare_object
from airflow_mpu_provider.multipart.checksums.digests import (
    DEFAULT_CHECKSUM_ALGORITHM,
    PartDigest,
    checksum_b64,
    checksum_field,
    digest_part,
    etag_is_md5_for_args,
)
from airflow_mpu_provider.multipart.checksums.whole_file import (
    FULL_OBJECT,
    checksum_type_mismatch,
    create_may_refuse_type,
    reported_checksum,
    resolve_checksum_type,
    stored_checksum_type,
)
from airflow_mpu_provider.multipart.completion import CompleteAndVerify, _Local
from airflow_mpu_provider.multipart.errors import (
    NOT_RESUMABLE_CODES,
    IntegrityError,
    InvalidUploadRequest,
    S3UploadError,
    SourceChangedError,
    UploadCancelledError,
    UploadNotRecordedError,
    error_code,
)
from airflow_mpu_provider.multipart.parallelism import DEFAULT_MAX_CONCURRENCY
from airflow_mpu_provider.multipart.parts.plan import Part, PartPlan
from airflow_mpu_provider.multipart.parts.record import PartRecord
from airflow_mpu_provider.multipart.progress import DEFAULT_PROGRESS_INTERVAL, PartMeter, ProgressReporter
from airflow_mpu_provider.multipart.resume import (
    LEFT_ALONE_HINT,
    FoundUpload,
    check_plan_fits,
    crc_only,
    review_stored_part,
)
from airflow_mpu_provider.multipart.schedule import UploadPaused, UploadSchedule
from airflow_mpu_provider.multipart.sources.file import FileSource
from airflow_mpu_provider.multipart.sources.file_range import FileRange, range_footprint
from airflow_mpu_provider.multipart.units import GiB, format_bytes, format_rate, plural
from airflow_mpu_provider.multipart.upload import MultipartUpload, head_object

#: Parts sent at once; chosen from benchmarks/bench_upload.py.
DEFAULT_CONCURRENCY = 8
#: Upper bound on part bytes held in memory at once (workers are reduced for very large parts).
DEFAULT_MAX_BUFFER_BYTES = 1 * GiB

#: Errors after which keeping the upload for a retry makes no sense: the retry could not use it.
#: (UploadNotRecordedError: kept, nothing would point at it.)
_NOT_RESUMABLE = (
    SourceChangedError,
    IntegrityError,
    UploadCancelledError,
    InvalidUploadRequest,
    UploadNotRecordedError,
)
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

    #: Parts in flight: a fixed number, or None (the default) to adapt it while the upload runs: a file
    #: starts at 8 and adds parts while the aggregate rate rises (parallelism.py); a stream keeps 8.
    concurrency: int | None = None
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
    #: Upper bound on parts in flight when ``concurrency`` is None (adaptive).
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY

    def file_workers_for(self, part_size: int) -> int:
        """Workers for a file's parts: each holds one read chunk (``range_footprint``), not a whole part;
        ``concurrency`` if fixed, else the adaptive bound ``max_concurrency``, within ``max_buffer_bytes``."""
        if self.concurrency is not None:
            return self.workers_for(range_footprint(part_size))
        return max(1, min(self.max_concurrency, self.max_buffer_bytes // max(range_footprint(part_size), 1)))

    def workers_for(self, part_size: int, *, held_by_reader: int = 0) -> int:
        """Parts of ``part_size`` that may be in flight at once: as many as fit in ``max_buffer_bytes``
        beside the ``held_by_reader`` parts a reader holds (a stream reads the next part while others are
        sent), at most ``concurrency`` and never fewer than one, so that huge parts still upload.
        """
        fit = self.max_buffer_bytes // max(part_size, 1) - held_by_reader
        return max(1, min(DEFAULT_CONCURRENCY if self.concurrency is None else self.concurrency, fit))


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
    #: What rests on a CRC alone (no MD5 or SHA digest to prove it), e.g. "the existing object"; None: nothing.
    crc_only: str | None = None
    #: Parts in flight at the end of the run: what adaptive parallelism settled on (or the fixed count).
    concurrency_settled: int | None = None

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
        crc_only=None if comparison.collision_resistant else f"the existing object ({comparison.detail})",
    )


class BaseUploadEngine(CompleteAndVerify):
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
        # Part bodies report (and a cap charges) their socket reads only, not botocore's signer's pass.
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
        #: What of this run rests on a CRC alone (resumed parts without an MD5 ETag), for the result.
        self.crc_only: str | None = None

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

    def _put(
        self, number: int, data: bytes | bytearray | memoryview | FileRange, meter: PartMeter | None = None
    ) -> PartRecord:
        """Hash and send one part; its record carries the part's MD5 when one was computed. ``meter``
        hears of the body's bytes as they go out (progress in bytes, not in finished parts)."""
        assert self.upload is not None
        algorithm = self.options.checksum_algorithm
        # Until the store proves it echoes checksums, parts also carry Content-MD5 so that they (and the
        # object's ETag) can be verified; moto and many S3-compatible stores report only ETags.
        with_md5 = algorithm is None or not self.upload.store_echoes_checksums
        if isinstance(data, FileRange):  # a file's part: one pass through the range, a chunk at a time
            digest = data.digest(number, algorithm=algorithm, with_md5=with_md5)
        else:
            digest = digest_part(number, data, algorithm=algorithm, with_md5=with_md5)
        return self.upload.put_part(number, data, digest, cancel=self._stop, throttle=self.bandwidth, meter=meter)

    def _cap_note(self) -> str:
        """For the log: the bandwidth cap, if there is one."""
        if self.bandwidth is None:
            return ""
        return f", at most {format_rate(self.bandwidth.rate)} together (max_bandwidth)"

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
        # Only a checksum the store keeps and that was verified (never one computed here alone).
        checksum, checksum_type = self._object_checksum
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
            crc_only=self.crc_only,
        )

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

    def _head(
        self, version_id: str | None = None, *, with_checksum: bool = False, if_match: str | None = None
    ) -> dict[str, Any]:
        """HeadObject of the target, with the upload's per-request arguments (see ``head_object``)."""
        return head_object(
            self.client,
            self.bucket,
            self.key,
            extra_args=self.options.extra_args,
            version_id=version_id,
            with_checksum=with_checksum,
            if_match=if_match,
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
        #: Parts in flight adapted at runtime (``concurrency=None``), or None for a fixed count.
        self._adaptive: AdaptiveParts | None = None

    def _in_flight(self, progress: ProgressReporter, part: Part) -> AbstractContextManager[None]:
        """Held while a part is in flight: a permit of the adaptive limit, or nothing (fixed workers)."""
        return nullcontext() if self._adaptive is None else self._adaptive.part(progress, part.length)

    # -- the run ------------------------------------------------------------------------------

    def run(
        self,
        *,
        resume_upload_id: str | None = None,
        keep_on_failure: bool = False,
        adopt: FoundUpload | Sequence[FoundUpload] | None = None,
    ) -> UploadResult:
        """Upload everything that is not already (verifiably) in S3, complete, and verify the object.

        ``resume_upload_id`` is *ours* (an earlier run of this same upload created it): it is
        continued, or aborted if it cannot be. If it no longer exists and the object already holds
        exactly the file (that run completed it, and its success was lost), nothing is sent.
        ``adopt``: *found* uploads (``find_adoptable_uploads``, newest first): the first whose every stored
        part verifies against the local bytes is continued; the others are left alone, never aborted.

        On failure the upload is aborted, unless ``keep_on_failure`` is set and the error leaves the
        upload usable for a later ``run(resume_upload_id=...)`` (``kept_for_resume`` then says so).
        """
        started = time.monotonic()
        if self.schedule is not None and not self.schedule.window_open():  # before anything is created
            raise self._paused(resume_upload_id or "", None)
        workers = self.options.file_workers_for(self.plan.part_size)
        self._adaptive = adaptive_parts_for(self.options, self.plan.part_size, self.client, self._stop, self.log)
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
        self,
        resume_upload_id: str | None,
        adopt: FoundUpload | Sequence[FoundUpload] | None,
        pool: ThreadPoolExecutor,
    ) -> dict[int, PartRecord] | ObjectComparison:
        """The verified parts of the upload to continue, or ``{}`` after creating one; or, when our
        earlier upload is gone because it became the object, the comparison that proves it."""
        opened: dict[int, PartRecord] | ObjectComparison | None = None
        if resume_upload_id:
            opened = self._reopen(resume_upload_id, pool)
        elif adopt is not None:
            for found in [adopt] if isinstance(adopt, FoundUpload) else adopt:  # newest first
                opened = self._adopt(found, pool)
                if opened is not None:
                    break
        if opened is not None:
            return opened
        self._create(
            f"{format_bytes(self.plan.size)} in {plural(self.plan.count, 'part')} "
            f"of {format_bytes(self.plan.part_size)}"
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

    def _reread(self, parts: Sequence[PartRecord], algorithms: Sequence[str], with_md5: bool) -> _Local | None:
        """Read the parts of the file again, for their MD5s and other algorithms' checksums (one part in memory)."""
        self.log.info(
            "Reading %s again to verify s3://%s/%s by %s.",
            self.description,
            self.bucket,
            self.key,
            " and ".join([*(["its parts' MD5s (the object's ETag)"] if with_md5 else []), *algorithms]),
        )
        local = _Local(md5s=[] if with_md5 else None, alternatives={a: [] for a in algorithms})
        for record in sorted(parts, key=lambda p: p.number):
            self._raise_if_cancelled()
            part = self.plan.part(record.number)
            with self.buffers.holding(part.length):
                data = self.source.read(part.offset, part.length)
                if local.md5s is not None:
                    local.md5s.append(hashlib.md5(data, usedforsecurity=False).digest())
                for algorithm in algorithms:
                    local.alternatives[algorithm].append((checksum_b64(algorithm, data), len(data)))
                del data
        self.source.check_unchanged()
        return local

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
                "Leaving incomplete upload %s of s3://%s/%s alone: %d of its %s %s not verify against "
                "%s (part %d: %s); %s. Starting a new upload.",
                found.upload_id,
                self.bucket,
                self.key,
                len(rejected),
                plural(len(found.parts), "part"),
                "does" if len(rejected) == 1 else "do",
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
            checksum = algorithm if with_checksum or crcs_needed else None
            with self.buffers.holding(range_footprint(part.length)):  # one pass, a chunk at a time
                digest = FileRange(self.source, part.offset, part.length).digest(
                    number, algorithm=checksum, with_md5=with_md5
                )
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
        self._note_crc_only([by_number[n] for n in kept], etags_are_md5)
        return kept, rejected

    def _note_crc_only(self, kept: list[dict[str, Any]], etags_are_md5: bool) -> None:
        """Say (log and result) when stored parts were proven by a CRC alone: it detects accidents, not forgery."""
        algorithm = self.options.checksum_algorithm
        weak = [p["PartNumber"] for p in kept if crc_only(p, algorithm, etag_is_md5=etags_are_md5)]
        if not weak:
            return
        self.crc_only = f"{len(weak)} resumed parts (verified by their {algorithm} checksum)"
        self.log.warning(
            "%d stored parts of s3://%s/%s were verified by their %s checksum alone: the store gives no MD5 ETag "
            "for them (SSE-KMS or SSE-C), and a CRC detects accidents, not forgery.",
            len(weak),
            self.bucket,
            self.key,
            algorithm,
        )

    def _log_resuming(self, kept: dict[int, PartRecord]) -> None:
        assert self.upload is not None
        kept_bytes = sum(self.plan.part(n).length for n in kept)
        self.log.info(
            "Resuming upload %s of s3://%s/%s: %d of %s (%s) already uploaded and verified "
            "against the local file; %s to send.",
            self.upload.upload_id,
            self.bucket,
            self.key,
            len(kept),
            plural(self.plan.count, "part"),
            format_bytes(kept_bytes),
            plural(self.plan.count - len(kept), "part"),
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
                "Sending %s (%s) with %s%s.",
                plural(len(missing), "part"),
                format_bytes(sum(p.length for p in missing)),
                plural(workers, "parallel worker"),
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
        if self._adaptive is not None and missing:
            self.log.info("Adaptive parallelism: %s.", self._adaptive.summary())
        response = self._complete(parts, self.plan.size)
        result = self._result(
            response,
            size=self.plan.size,
            part_size=self.plan.part_size,
            parts=self.plan.count,
            sent=(len(missing), sum(p.length for p in missing)),
            resumed=(len(kept), sum(self.plan.part(n).length for n in kept)),
            started=started,
        )
        result.concurrency_settled = workers if self._adaptive is None else self._adaptive.settled
        return result

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
        meter = progress.part_meter()
        # Read from the file as the socket asks: one chunk of the part in memory at a time (sources/file_range.py).
        with self._in_flight(progress, part), self.buffers.holding(range_footprint(part.length)):
            record = self._put(part.number, FileRange(self.source, part.offset, part.length), meter)
        self.source.check_unchanged()
        progress.advance(part.length, meter)
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
