"""What every upload engine shares, whatever the bytes come from: create, send a part, complete and
verify, abort, cancel (``BaseUploadEngine``); and which failures leave an upload worth keeping.

The file engine (``file_engine.py``) and the stream engine (``stream_engine.py``) build on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

from airflow_mpu_provider.multipart.bandwidth import BandwidthLimit, bandwidth_limit, meter_only_what_is_sent
from airflow_mpu_provider.multipart.buffers import BufferBudget
from airflow_mpu_provider.multipart.checksums.compare import ObjectComparison
from airflow_mpu_provider.multipart.checksums.digests import (
    digest_part,
    etag_is_md5_for_args,
)
from airflow_mpu_provider.multipart.checksums.whole_file import (
    FULL_OBJECT,
    create_may_refuse_type,
    resolve_checksum_type,
)
from airflow_mpu_provider.multipart.completion import CompleteAndVerify
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
from airflow_mpu_provider.multipart.options import UploadOptions
from airflow_mpu_provider.multipart.parts.record import PartRecord
from airflow_mpu_provider.multipart.progress import PartMeter
from airflow_mpu_provider.multipart.result import UploadResult
from airflow_mpu_provider.multipart.schedule import UploadPaused, UploadSchedule
from airflow_mpu_provider.multipart.sources.file_range import FileRange
from airflow_mpu_provider.multipart.units import format_rate
from airflow_mpu_provider.multipart.upload import MultipartUpload, head_object

#: Errors after which keeping the upload for a retry makes no sense: the retry could not use it.
#: (UploadNotRecordedError: kept, nothing would point at it.)
_NOT_RESUMABLE = (
    SourceChangedError,
    IntegrityError,
    UploadCancelledError,
    InvalidUploadRequest,
    UploadNotRecordedError,
)


def upload_stays_usable(error: BaseException) -> bool:
    """Whether, after ``error``, a later run could still continue the upload (so keeping it makes sense).

    A timeout (Airflow's AirflowTaskTimeout) counts as usable like any other interruption; a cancel,
    an interpreter exit, a changed source or a refused request does not.
    """
    if isinstance(error, (KeyboardInterrupt, SystemExit, *_NOT_RESUMABLE)):
        return False
    return error_code(error) not in NOT_RESUMABLE_CODES


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
            upload.through(self.abort_client).abort()
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
        # object's ETag) can be verified; moto and many S3-compatible stores report only ETags. Over plain
        # HTTP every part does: it spares the part a SHA-256 payload signature (signing.py).
        upload = self.upload
        with_md5 = algorithm is None or not upload.store_echoes_checksums or upload.md5_on_every_part
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
