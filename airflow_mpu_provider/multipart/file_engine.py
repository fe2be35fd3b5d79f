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
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Any

from airflow_mpu_provider.multipart.adaptive_parts import AdaptiveParts, adaptive_parts_for
from airflow_mpu_provider.multipart.base_engine import BaseUploadEngine
from airflow_mpu_provider.multipart.checksums.compare import ObjectComparison, compare_object
from airflow_mpu_provider.multipart.checksums.digests import (
    PartDigest,
    checksum_b64,
)
from airflow_mpu_provider.multipart.checksums.whole_file import (
    FULL_OBJECT,
    checksum_type_mismatch,
    stored_checksum_type,
)
from airflow_mpu_provider.multipart.completion import _Local
from airflow_mpu_provider.multipart.errors import (
    InvalidUploadRequest,
    S3UploadError,
    UploadCancelledError,
)
from airflow_mpu_provider.multipart.options import UploadOptions
from airflow_mpu_provider.multipart.parts.plan import Part, PartPlan
from airflow_mpu_provider.multipart.parts.record import PartRecord
from airflow_mpu_provider.multipart.progress import ProgressReporter
from airflow_mpu_provider.multipart.result import UploadResult, result_for_existing_object
from airflow_mpu_provider.multipart.resume import (
    LEFT_ALONE_HINT,
    FoundUpload,
    check_plan_fits,
    crc_only,
    review_stored_part,
)
from airflow_mpu_provider.multipart.schedule import UploadPaused
from airflow_mpu_provider.multipart.sources.file import FileSource
from airflow_mpu_provider.multipart.sources.file_range import FileRange, range_footprint
from airflow_mpu_provider.multipart.units import format_bytes, plural
from airflow_mpu_provider.multipart.upload import MultipartUpload


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
                if self._adaptive is not None and self.upload is not None:
                    self._adaptive.begin_for_round_trip(self.upload.quickest_answer)
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
