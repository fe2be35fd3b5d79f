"""The sequence of a stream upload (a command's output, any readable): no resume, any failure aborts.

    result = StreamUploadSequence(client, bucket, key, options=options, first_part_size=size, ledger=ledger).run(stream)

A stream cannot be replayed, so the ledger's record (``{bucket, key, upload_id}``) exists only so that
the try after one that died where nothing could run (SIGKILL, OOM) aborts that upload before starting
its own. ``replace=False`` refuses any object at the key (there is nothing to compare it with).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from airflow_mpu_provider.multipart import validation
from airflow_mpu_provider.multipart.cancellation import CancelScope
from airflow_mpu_provider.multipart.errors import MultipartUploadError, UploadCancelledError
from airflow_mpu_provider.multipart.existing import check_key_free
from airflow_mpu_provider.multipart.ledger import UploadLedger, forget, recorded_upload, recorded_upload_id
from airflow_mpu_provider.multipart.options import UploadOptions
from airflow_mpu_provider.multipart.parts.plan import DEFAULT_PART_SIZE, plan_parts
from airflow_mpu_provider.multipart.result import UploadResult
from airflow_mpu_provider.multipart.stream_engine import Stream, StreamUploadEngine


def first_stream_part_size(part_size: Any) -> int:
    """A stream's first part size: ``part_size`` (checked as a file's is) or the default 16 MiB."""
    first = validation.part_size_setting(part_size) or DEFAULT_PART_SIZE
    plan_parts(first, first)  # the same part-size checks as for a file
    return first


class StreamUploadSequence:
    """One stream to one key: ``prepare`` (before the stream is read or a command started, so that a
    refusal costs nothing), then ``run``. ``cancel`` stops it from any thread."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        *,
        options: UploadOptions,
        first_part_size: int,
        growing: bool = True,
        ledger: UploadLedger | None = None,
        on_upload_started: Callable[[str], None] | None = None,
        on_aborted: Callable[[], None] | None = None,
        cancel: CancelScope | None = None,
        abort_client: Any | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.client, self.bucket, self.key = client, bucket, key
        self.options = options
        self.first_part_size = first_part_size
        self.growing = growing
        self.ledger = ledger
        self.on_upload_started = on_upload_started
        self.on_aborted = on_aborted
        self.cancel = cancel if cancel is not None else CancelScope()
        self.abort_client = abort_client
        self.log = log or logging.getLogger(__name__)

    def prepare(self) -> None:
        """End a dead try's recorded upload, then check the key for ``replace=False``."""
        self.cancel.raise_if_cancelled()
        if self.ledger is not None:
            self._abort_dead_try(self.ledger.get())
        if not self.options.overwrite:
            check_key_free(self.client, self.bucket, self.key, self.options.extra_args)

    def run(self, stream: Stream) -> UploadResult:
        engine = StreamUploadEngine(
            self.client,
            bucket=self.bucket,
            key=self.key,
            stream=stream,
            first_part_size=self.first_part_size,
            growing=self.growing,
            options=self.options,
            log=self.log,
            on_upload_started=self._started,
            abort_client=self.abort_client,
        )
        with self.cancel.cancelling(engine.cancel):
            try:
                result = engine.run()
            except BaseException:
                self._after_failure(engine)
                raise
        forget(self.ledger, self.log)
        if self.cancel.cancelled:
            raise UploadCancelledError("the upload was cancelled (the task was killed) after it had finished")
        return result

    def _started(self, upload_id: str) -> None:
        """The ledger first (what the next try needs if this one dies), then the caller; inside the
        engine's abort scope: if either raises, the fresh upload is aborted."""
        if self.ledger is not None:
            self.ledger.set({"bucket": self.bucket, "key": self.key, "upload_id": upload_id})
        if self.on_upload_started is not None:
            self.on_upload_started(upload_id)

    def _after_failure(self, engine: StreamUploadEngine) -> None:
        """A failed try that left no upload (none created, or the engine's abort is done) forgets its
        record; an abort that failed leaves it, so that the next try aborts the upload."""
        upload = engine.upload
        if upload is not None and upload.aborted and self.on_aborted is not None:
            self.on_aborted()
        if upload is None or not upload.upload_id or upload.aborted:
            forget(self.ledger, self.log)

    def _abort_dead_try(self, stored: Mapping[str, Any] | None) -> None:
        """Abort the stream upload an earlier try recorded and could not end (it died). It is ours, and a
        stream cannot be resumed; if the abort fails (no s3:AbortMultipartUpload), this try goes on."""
        upload_id = recorded_upload_id(stored)
        if upload_id is None or stored is None:
            return
        where = f"s3://{stored.get('bucket')}/{stored.get('key')}"
        self.log.warning(
            "An earlier try's stream upload %s to %s was left behind (that try died); aborting it.", upload_id, where
        )
        upload = recorded_upload(self.client, stored, self.bucket, self.key, self.options.extra_args)
        try:
            upload.abort()
        except MultipartUploadError as e:
            self.log.warning(
                "Could not abort the earlier try's stream upload %s to %s (%s); it needs s3:AbortMultipartUpload. "
                "S3AbortStaleUploadsOperator or a lifecycle rule (AbortIncompleteMultipartUpload) will remove it.",
                upload_id,
                where,
                e,
            )
        forget(self.ledger, self.log)
