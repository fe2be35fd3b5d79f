"""THE sequence of a file upload: "upload this file to this key, resuming what is provably ours".

    result = FileUploadSequence(client, path, bucket, key, options=options, ledger=ledger, retry=RetryPlan()).run()

In this order, so that whatever stops it (a failure, a cancel) ends what it owns:
1. the ledger's record (an earlier try's upload) is taken over: it is ours from that moment; one that
   cannot be continued (the file or the settings changed, ``resume=False``) is aborted and forgotten;
2. ``replace=False``: the object is compared with the file before anything is created (an object that
   already holds exactly the file is success with nothing sent);
3. without a record: uploads found with ListMultipartUploads, quiet for ``adopt_quiet_after``, that show
   this upload's settings (adopted only if their stored parts verify against the file);
4. the file engine runs; a new upload is recorded in the ledger the moment it exists (if that fails it is
   aborted: an upload nothing points at must not be kept);
5. on failure the upload is kept where the next try will look for it (``keep_for_retry``) or aborted; on
   success the record is forgotten. A cancel that lands after completion still fails the run
   (UploadCancelledError), with the record kept: the next try finds the object already is the file.

The front door (``multipart.upload_file``), ``S3MultipartHook.upload_file`` and the operator all run it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from airflow_mpu_provider.multipart.base_engine import upload_stays_usable
from airflow_mpu_provider.multipart.cancellation import CancelScope
from airflow_mpu_provider.multipart.checksums.whole_file import resolve_checksum_type
from airflow_mpu_provider.multipart.errors import S3UploadError, UploadCancelledError, UploadNotRecordedError
from airflow_mpu_provider.multipart.existing import existing_object
from airflow_mpu_provider.multipart.file_engine import FileUploadEngine
from airflow_mpu_provider.multipart.ledger import UploadLedger, forget, recorded_upload, recorded_upload_id
from airflow_mpu_provider.multipart.options import UploadOptions
from airflow_mpu_provider.multipart.parts.plan import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, PartPlan, plan_parts
from airflow_mpu_provider.multipart.result import UploadResult, result_for_existing_object
from airflow_mpu_provider.multipart.resume import (
    DEFAULT_ADOPT_QUIET_AFTER,
    LISTING_UNAVAILABLE_CODES,
    FoundUpload,
    find_adoptable_uploads,
    hidden_object_args,
    object_args_fingerprint,
)
from airflow_mpu_provider.multipart.schedule import UploadPaused
from airflow_mpu_provider.multipart.sources.file import FileSource
from airflow_mpu_provider.multipart.units import format_bytes
from airflow_mpu_provider.multipart.upload import MultipartUpload


@dataclass(frozen=True)
class RetryPlan:
    """This upload will be tried again if this try fails: after ``delay``; ``resumes_by_id``: the caller
    keeps the UploadId itself (``on_upload_started``) and passes it back as ``resume_upload_id``."""

    delay: timedelta = timedelta(0)
    resumes_by_id: bool = False


def file_version(source: FileSource) -> dict[str, Any]:
    """The version of the file a record was written for: its path, size, mtime and inode."""
    fp = source.fingerprint
    return {"file": str(source.path), "size": fp.size, "mtime_ns": fp.mtime_ns, "inode": fp.inode}


def resume_record(bucket: str, key: str, source: FileSource, plan: PartPlan, options: UploadOptions) -> dict:
    """What a ledger record binds besides the UploadId: the file's version, the plan and the settings."""
    return {
        "bucket": bucket,
        "key": key,
        **file_version(source),
        "part_size": plan.part_size,
        "checksum_algorithm": options.checksum_algorithm,
        "checksum_type": resolve_checksum_type(options.checksum_type, options.checksum_algorithm),
        # Binds what S3 does not show of an incomplete upload (ACL, content type, metadata, tags, encryption).
        "object_args": object_args_fingerprint(options.extra_args),
    }


def recorded_part_size(record: Mapping[str, Any] | None, source: FileSource, log: logging.Logger) -> int | None:
    """The part size an earlier try recorded for this very version of the file (None: none usable), so
    that an upload planned by another version's rule (16 MiB parts before #22) is resumed rather than
    aborted and restarted. The plan stays a function of the file and arguments: the record is one of them."""
    if recorded_upload_id(record) is None:
        return None
    assert record is not None
    same_file = all(record.get(name) == value for name, value in file_version(source).items())
    recorded = record.get("part_size")
    if not same_file or not isinstance(recorded, int) or isinstance(recorded, bool):
        return None
    size = source.fingerprint.size
    if not MIN_PART_SIZE <= recorded <= MAX_PART_SIZE or PartPlan(size, recorded).count > MAX_PARTS:
        return None
    if recorded != plan_parts(size).part_size:
        log.info("Keeping the earlier try's part size (%s) to resume its upload.", format_bytes(recorded))
    return recorded


def keep_for_retry(
    retry: RetryPlan | None,
    *,
    recorded: bool,
    listing_available: bool | None,
    extra_args: Mapping[str, Any],
    adopt_quiet_after: timedelta | None,
    log: logging.Logger,
) -> bool:
    """Whether a failed try keeps its upload: only where the next try will look for it and take it.

    ``recorded``: a ledger holds the UploadId. Without one the next try can only find the upload with
    ListMultipartUploads, and adopts a found upload only after ``adopt_quiet_after`` of quiet and only
    when S3 shows all its settings: kept only if the retry waits that long, and aborted otherwise.
    """
    if retry is None:
        return False
    if recorded or retry.resumes_by_id:
        return True
    if listing_available is False:
        return False
    unlisted = "without task_state_store (Airflow < 3.3) the retry could find it only with ListMultipartUploads"
    if adopt_quiet_after is None:
        log.info("A failed try's upload will be aborted, not kept: %s; adopt_quiet_after=None adopts none.", unlisted)
        return False
    hidden = hidden_object_args(extra_args)
    if hidden:
        log.info(
            "A failed try's upload will be aborted, not kept: %s, and never adopts a found upload when the task "
            "sets %s (S3 does not show them for an incomplete upload).",
            unlisted,
            ", ".join(hidden),
        )
        return False
    if retry.delay < adopt_quiet_after:
        log.info(
            "A failed try's upload will be aborted, not kept: %s, and adopts it only after adopt_quiet_after (%s) "
            "of quiet, longer than retry_delay (%s). Make retry_delay >= adopt_quiet_after to resume.",
            unlisted,
            adopt_quiet_after,
            retry.delay,
        )
        return False
    return True


def why_not_continued(stored: Mapping[str, Any], changed: list[str]) -> str:
    """Why a recorded upload cannot be continued, from the record fields that changed."""
    if "object_args" in changed and "object_args" not in stored:
        return (
            "it was recorded by an earlier version of this provider, without the fingerprint of its object settings "
            "(ACL, content type, metadata, tags, encryption), so they cannot be proven to be this task's"
        )
    if changed == ["object_args"]:
        return (
            "the task's object settings (ACL, content type, metadata, tags, encryption, storage class or another "
            "extra_args entry) changed since it was created"
        )
    return f"it was for another version of the source or other settings ({', '.join(changed)} differ)"


class FileUploadSequence:
    """One file to one key, run once (``run``); ``cancel`` (a ``CancelScope``) stops it from any thread.

    ``client_for(part_size)``: when ``client`` is None, the client for the plan's parts (the hook's tuned one).
    ``options.overwrite`` False is ``replace=False``. ``resume``: continue the ledger's upload, else a
    found one (``adopt_quiet_after`` None: never a found one); False: always afresh, never keep.
    ``resume_upload_id``: an upload the caller says is ours (instead of the ledger's record).
    ``retry``: how this upload will be tried again if this try fails (None: it will not).
    ``on_upload_started(upload_id)`` after the ledger recorded it; ``on_aborted()`` when a failed run
    aborted the upload its engine held. ``clock``/``on_deadline``: the schedule's (see schedule.py).
    """

    def __init__(
        self,
        client: Any,
        path: Any,
        bucket: str,
        key: str,
        *,
        options: UploadOptions,
        client_for: Callable[[int], Any] | None = None,
        part_size: int | None = None,
        resume: bool = True,
        adopt_quiet_after: timedelta | None = DEFAULT_ADOPT_QUIET_AFTER,
        resume_upload_id: str | None = None,
        ledger: UploadLedger | None = None,
        retry: RetryPlan | None = None,
        on_upload_started: Callable[[str], None] | None = None,
        on_aborted: Callable[[], None] | None = None,
        cancel: CancelScope | None = None,
        abort_client: Any | None = None,
        clock: Callable[[], datetime] | None = None,
        on_deadline: Callable[[bool, datetime | None], None] | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.client, self.path, self.bucket, self.key = client, path, bucket, key
        self.client_for = client_for
        self.options = options
        self.part_size = part_size
        self.resume = resume
        self.adopt_quiet_after = adopt_quiet_after
        self.resume_upload_id = resume_upload_id
        self.ledger = ledger
        self.retry = retry if resume else None
        self.on_upload_started = on_upload_started
        self.on_aborted = on_aborted
        self.cancel = cancel if cancel is not None else CancelScope()
        self.abort_client = abort_client
        self.clock, self.on_deadline = clock, on_deadline
        self.log = log or logging.getLogger(__name__)
        #: The upload an earlier try recorded: ours from the moment it is read, until the engine holds it.
        self.ours: MultipartUpload | None = None
        self.engine: FileUploadEngine | None = None
        #: Whether ListMultipartUploads worked (None: not asked).
        self.listing_available: bool | None = None
        self.record: dict[str, Any] = {}

    # -- the run ----------------------------------------------------------------------------------

    def run(self) -> UploadResult:
        started = time.monotonic()
        with FileSource(self.path) as source, self.cancel.cancelling(self._abort_ours_in_a_thread):
            stored = self.ledger.get() if self.ledger is not None else None
            part_size = self.part_size
            if part_size is None and self.ledger is not None:
                part_size = recorded_part_size(stored, source, self.log)
            plan = plan_parts(source.size, part_size)
            if self.client is None and self.client_for is not None:
                self.client = self.client_for(plan.part_size)  # sized for the parts this plan lets fly at once
            self.record = resume_record(self.bucket, self.key, source, plan, self.options)
            try:
                result = self._steps(source, plan, stored, started)
            except BaseException as error:
                self._after_failure(error)
                raise
        if self.cancel.cancelled:
            # Completed, but cancelled meanwhile: the run fails. The record stays, so that the next try finds
            # the upload gone, sees the object already is the file, and succeeds without sending anything.
            raise UploadCancelledError("the upload was cancelled (the task was killed) after it had finished")
        forget(self.ledger, self.log)
        return result

    def _steps(self, source: FileSource, plan: PartPlan, stored: Any, started: float) -> UploadResult:
        resume_id = self.resume_upload_id or self._take_over(stored)
        self.cancel.raise_if_cancelled()
        if not self.options.overwrite:
            done = self._already_there(source, plan, started)
            if done is not None:
                return done
        self.cancel.raise_if_cancelled()
        found = self._find_adoptable(plan) if self.resume and resume_id is None else []
        self.cancel.raise_if_cancelled()
        self.engine = self._make_engine(source, plan)
        with self.cancel.cancelling(self.engine.cancel):
            self.cancel.raise_if_cancelled()
            return self.engine.run(resume_upload_id=resume_id, adopt=found, keep_on_failure=self._keep())

    def _already_there(self, source: FileSource, plan: PartPlan, started: float) -> UploadResult | None:
        """``replace=False``: the result when the object already holds exactly the file (the recorded upload is
        then ended); None when the key is free; S3UploadError(ObjectExists) for any other object."""
        existing = existing_object(
            self.client,
            self.bucket,
            self.key,
            source,
            self.options.extra_args,
            part_size_hint=plan.part_size,
            cancel=self.cancel.event,
            log=self.log,
        )
        if existing is None:
            return None
        self._end_ours("the object already holds the file")
        return result_for_existing_object(
            existing,
            bucket=self.bucket,
            key=self.key,
            plan=plan,
            checksum_algorithm=self.options.checksum_algorithm,
            started=started,
        )

    # -- ownership --------------------------------------------------------------------------------

    def _take_over(self, stored: Any) -> str | None:
        """The UploadId the ledger recorded, if this run can continue it; one that cannot be continued is
        aborted and forgotten at once (a failed abort raises, and the record stays)."""
        upload_id = recorded_upload_id(stored)
        if upload_id is None:
            return None
        self.ours = recorded_upload(self.client, stored, self.bucket, self.key, self.options.extra_args)
        changed = sorted(k for k in self.record if stored.get(k) != self.record[k])
        if not changed and self.resume:
            self.log.info("Found upload %s to resume in %s.", upload_id, self.ledger)
            return upload_id
        self.log.warning(
            "The earlier try's upload %s cannot be continued (%s); aborting it (it is this task's) and starting "
            "afresh.",
            upload_id,
            why_not_continued(stored, changed) if changed else "resume=False",
        )
        self.ours.abort()  # if this fails, the record stays (see _after_failure)
        self.ours = None
        forget(self.ledger, self.log)
        return None

    def _keep(self) -> bool:
        return keep_for_retry(
            self.retry,
            recorded=self.ledger is not None,
            listing_available=self.listing_available,
            extra_args=self.options.extra_args,
            adopt_quiet_after=self.adopt_quiet_after,
            log=self.log,
        )

    def _after_failure(self, error: BaseException) -> None:
        """End this run's upload after a failure, wherever it happened.

        Once the engine holds an upload it has already kept or aborted it; before that, the only upload
        that is ours is the one the ledger recorded, and it is ended here the same way.
        """
        engine = self.engine
        if engine is not None and engine.upload is not None:
            if not engine.kept_for_resume and engine.upload.aborted:
                forget(self.ledger, self.log)  # aborted: nothing for the next try to look for
                if self.on_aborted is not None:
                    self.on_aborted()
            return  # an abort that failed leaves the record, so that the next try finds the upload and ends it
        if self.ours is None:
            return
        paused = isinstance(error, UploadPaused)  # the window closed: kept for the next run, as for a retry
        if not self.cancel.cancelled and (paused or (upload_stays_usable(error) and self._keep())):
            self.log.warning(
                "Keeping upload %s of s3://%s/%s for the retry (recorded in %s).",
                self.ours.upload_id,
                self.ours.bucket,
                self.ours.key,
                self.ledger,
            )
            return
        self._end_ours("the upload was cancelled" if self.cancel.cancelled else "no retry will continue it")

    def _end_ours(self, why: str) -> None:
        """Abort the recorded upload (if any is left) and forget the record; an abort that fails keeps the
        record, so that the next try (or whoever reads the ledger) still finds it."""
        ours, self.ours = self.ours, None
        if ours is not None:
            self.log.warning("Aborting upload %s of s3://%s/%s: %s.", ours.upload_id, ours.bucket, ours.key, why)
            try:
                ours.abort()
            except Exception as abort_error:  # the original error matters more; say what is left behind
                self.log.error(
                    "Could not abort multipart upload %s of s3://%s/%s (%s); it stays recorded in %s for the next "
                    "try to abort; else abort it by hand or let S3AbortStaleUploadsOperator clean it up.",
                    ours.upload_id,
                    ours.bucket,
                    ours.key,
                    abort_error,
                    self.ledger,
                )
                return
        forget(self.ledger, self.log)

    def _abort_ours_in_a_thread(self) -> None:
        """On cancel before the engine took the recorded upload over: abort it at once, off the canceller's
        thread, through the abort client (the run aborts it again, harmlessly, when it sees the cancel)."""
        ours = self.ours
        if ours is None or self.engine is not None or self.abort_client is None:
            return  # nothing recorded, or the engine holds it (its cancel aborts it)
        self.log.warning("Cancelled: aborting multipart upload %s.", ours.upload_id)
        quick = ours.through(self.abort_client)
        threading.Thread(target=self._abort_quietly, args=(quick,), name="mpu-cancel-abort", daemon=True).start()

    def _abort_quietly(self, upload: MultipartUpload) -> None:
        try:
            upload.abort()
        except Exception as e:  # the run aborts again and reports what is left
            self.log.warning("Abort of %s on cancel failed; it is aborted again: %s", upload.upload_id, e)

    # -- the ledger -------------------------------------------------------------------------------

    def _started(self, upload_id: str) -> None:
        """Record the upload the moment it exists (inside the engine's abort scope: if this raises, the
        fresh upload is aborted, never kept with nothing pointing at it); then tell the caller."""
        if self.ledger is not None:
            try:
                self.ledger.set({**self.record, "upload_id": upload_id})
            except Exception as e:
                raise UploadNotRecordedError(
                    f"could not record upload {upload_id} of s3://{self.bucket}/{self.key} in {self.ledger} ({e}); "
                    "it is aborted, since a retry could not find it"
                ) from e
        if self.on_upload_started is not None:
            self.on_upload_started(upload_id)

    # -- the steps' parts -------------------------------------------------------------------------

    def _find_adoptable(self, plan: PartPlan) -> list[FoundUpload]:
        """The found uploads (ListMultipartUploads, no record) quiet for ``adopt_quiet_after`` that show this
        upload's settings, newest first (the engine adopts the first whose parts verify), or [].

        A store or role without ListMultipartUploads degrades: one warning, no resume across runs, and the
        upload goes on afresh.
        """
        quiet_after = self.adopt_quiet_after
        if quiet_after is None:
            self.log.info("Not looking for uploads left at the key by others (adopt_quiet_after=None).")
            return []
        try:
            found = find_adoptable_uploads(
                self.client,
                self.bucket,
                self.key,
                plan,
                self.options.checksum_algorithm,
                quiet_after=quiet_after,
                extra_args=self.options.extra_args,
                log=self.log,
                checksum_type=resolve_checksum_type(self.options.checksum_type, self.options.checksum_algorithm),
            )
        except S3UploadError as e:
            if e.code not in LISTING_UNAVAILABLE_CODES:
                raise
            self.listing_available = False
            self._warn_unlisted(e.code)
            return []
        self.listing_available = True
        if found:
            self.log.info(
                "Found incomplete upload%s %s for s3://%s/%s with ListMultipartUploads, quiet for at least %s; "
                "their parts will be verified against the local file, newest first, before one is adopted.",
                "s" if len(found) > 1 else "",
                ", ".join(f.upload_id for f in found),
                self.bucket,
                self.key,
                quiet_after,
            )
        return found

    def _warn_unlisted(self, code: str | None) -> None:
        costs = ""
        if self.retry is not None and self.ledger is None:
            costs = " and a failed try's upload is aborted rather than kept"
        self.log.warning(
            "ListMultipartUploads is not available on s3://%s (%s): resume across runs is off, so an upload an "
            "earlier run left is not continued%s. Uploading afresh. To turn it on, grant "
            "s3:ListBucketMultipartUploads on arn:aws:s3:::%s (a store without the API cannot).",
            self.bucket,
            code,
            costs,
            self.bucket,
        )

    def _make_engine(self, source: FileSource, plan: PartPlan) -> FileUploadEngine:
        engine = FileUploadEngine(
            self.client,
            bucket=self.bucket,
            key=self.key,
            source=source,
            plan=plan,
            options=self.options,
            log=self.log,
            on_upload_started=self._started,
            abort_client=self.abort_client,
        )
        if engine.schedule is not None:
            if self.clock is not None:
                engine.schedule.now = self.clock
            if self.on_deadline is not None:
                engine.schedule.on_deadline = self.on_deadline
        return engine
