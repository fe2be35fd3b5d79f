"""MultipartUploadOperator: the Airflow glue around the upload engine.

The operator owns what only Airflow knows: templating, argument validation, XCom, the
task_state_store that lets a retry resume (``retry_ledger``), whether a retry will follow, ``on_kill``,
lineage and metrics. Every S3 call goes through ``S3MultipartHook`` (which builds the clients from the
connection, so every connection extra keeps working) and the one upload sequence it runs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_mpu_provider.hooks.multipart import S3MultipartHook
from airflow_mpu_provider.multipart import (
    DEFAULT_ADOPT_QUIET_AFTER,
    DEFAULT_CHECKSUM_ALGORITHM,
    DEFAULT_MAX_BUFFER_BYTES,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_PROGRESS_INTERVAL,
    UploadPaused,
    UploadResult,
    UploadWindow,
    bandwidth_setting,
    command_label,
    object_target,
    program_name,
    validation,
)
from airflow_mpu_provider.multipart.errors import InvalidUploadRequest, UploadCancelledError
from airflow_mpu_provider.operators.arguments import (
    TEMPLATE_FIELDS,
    check_arguments,
    check_rendered_arguments,
    upload_arguments,
)
from airflow_mpu_provider.operators.metrics import deadline_metric, log_summary, upload_metrics
from airflow_mpu_provider.operators.retry_ledger import STATE_KEY, STREAM_STATE_KEY, retry_ledger, retry_plan
from airflow_mpu_provider.operators.upload_schedule import (
    UploadSchedule,
    check_schedule_arguments,
    reschedule_paused,
    utc_now,
)
from airflow_mpu_provider.version_compat import BaseOperator

if TYPE_CHECKING:
    try:
        from airflow.sdk import Context
    except ImportError:  # pragma: no cover
        from airflow.utils.context import Context  # type: ignore[no-redef]

__all__ = ["STATE_KEY", "STREAM_STATE_KEY", "MultipartUploadOperator"]


class MultipartUploadOperator(BaseOperator):
    """
    Upload a local file (or a command's output) to S3 as a parallel, resumable, verified multipart upload.

    The UploadId is pushed to XCom (keys ``upload_id`` and ``multipart_upload``) as soon as S3 hands
    it out. If the task fails and Airflow will retry it, the upload is kept and the retry resumes it:
    it re-verifies every part already in S3 against the local bytes and sends only what is missing.
    If no retry follows, or the task is killed (``on_kill``), the upload is aborted so that no
    invisible, billed parts stay behind. The README ("Arguments") explains every argument at length.

    :param file: local path of the file to upload; give ``file`` or ``command``. (templated)
    :param command: a shell command (bash, pipefail) whose stdout is streamed to S3, never resumed. (templated)
    :param command_timeout: seconds or a ``timedelta`` (> 0) after which the command is killed. (templated)
    :param equal_parts: for ``command``: every part ``part_size`` (stores such as R2), instead of growing parts.
    :param key: destination key, or ``s3://bucket/key`` when ``bucket`` is not given. (templated)
    :param bucket: destination bucket; None when ``key`` is an ``s3://`` URL. (templated)
    :param aws_conn_id: Airflow AWS connection, used through S3Hook. (templated)
    :param verify: whether to verify SSL certificates (False, or a CA bundle path), as in S3Hook.
    :param replace: overwrite an existing object; False (default): an object other than the file fails the task.
    :param part_size: bytes per part (an int), 5 MiB..5 GiB; None (default): picked from the file's size.
    :param concurrency: parts sent in parallel (1..10,000); None (default): adaptive for a file, 8 for a command.
    :param max_concurrency: upper bound on parts in flight when ``concurrency`` is None (default 64).
    :param max_buffer_bytes: cap (bytes) on part bytes held in memory at once (default 1 GiB).
    :param max_bandwidth: cap in bytes/s, all parts together, or a timetable {"HH:MM": rate or None}; None: no cap.
    :param upload_window: for ``file``: the times it may send ("22:00-06:00"); outside, it reschedules. (templated)
    :param window_timezone: IANA zone of window, timetable, "HH:MM" finish_by; None: DAG's, else UTC. (templated)
    :param finish_by: for ``file``: when the upload should be done ("HH:MM", ISO 8601...); warns if at risk. (templated)
    :param checksum_algorithm: "CRC32C" (default), "CRC32", "SHA1", "SHA256", "CRC64NVME"; None: Content-MD5 only.
    :param checksum_type: "FULL_OBJECT" or "COMPOSITE"; None (default): FULL_OBJECT for CRCs, else COMPOSITE.
    :param encrypt: server-side encryption with S3-managed keys (SSE-S3, AES256).
    :param sse_kms_key_id: server-side encryption with this KMS key (SSE-KMS). (templated)
    :param storage_class: e.g. "STANDARD_IA", "INTELLIGENT_TIERING", "DEEP_ARCHIVE". (templated)
    :param content_type: Content-Type of the object. (templated)
    :param metadata: user metadata (``x-amz-meta-*``). (templated)
    :param tags: object tags as a dict. (templated)
    :param acl_policy: canned ACL, e.g. "bucket-owner-full-control". (templated)
    :param extra_args: any other CreateMultipartUpload argument; wins over the arguments above.
    :param resume: continue an earlier upload of this file to this key, provably this task's; False: start afresh.
    :param keep_upload_for_retry: keep the upload for the retry when the task fails and Airflow will retry.
    :param adopt_quiet_after: quiet time before a found upload is adopted (default 15 minutes); None: never adopt.
    :param progress_interval: seconds (>= 0) or a ``timedelta`` between progress lines in the task log.
    """

    template_fields: Sequence[str] = TEMPLATE_FIELDS
    template_fields_renderers: ClassVar[dict[str, str]] = {"metadata": "json", "tags": "json"}
    ui_color = "#f0eee4"
    #: This run's window and deadline (resolved at execute: timezone, rendered templates), and their clock.
    _window: UploadWindow | None = None
    _finish_by: datetime | None = None
    _window_now = staticmethod(utc_now)

    def __init__(
        self,
        *,
        key: str,
        file: str | None = None,
        command: str | None = None,
        command_timeout: float | timedelta | str | None = None,
        equal_parts: bool = False,
        bucket: str | None = None,
        aws_conn_id: str | None = "aws_default",
        verify: str | bool | None = None,
        replace: bool = False,
        part_size: int | None = None,
        concurrency: int | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        max_bandwidth: int | Mapping[str, int | None] | None = None,
        upload_window: str | Sequence[str] | None = None,
        window_timezone: str | None = None,
        finish_by: Any = None,
        checksum_algorithm: str | None = DEFAULT_CHECKSUM_ALGORITHM,
        checksum_type: str | None = None,
        encrypt: bool = False,
        sse_kms_key_id: str | None = None,
        storage_class: str | None = None,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
        acl_policy: str | None = None,
        extra_args: Mapping[str, Any] | None = None,
        resume: bool = True,
        keep_upload_for_retry: bool = True,
        adopt_quiet_after: float | timedelta | None = DEFAULT_ADOPT_QUIET_AFTER,
        progress_interval: float | timedelta = DEFAULT_PROGRESS_INTERVAL,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.file, self.command, self.command_timeout, self.equal_parts = file, command, command_timeout, equal_parts
        self.key, self.bucket, self.aws_conn_id, self.verify, self.replace = key, bucket, aws_conn_id, verify, replace
        self.part_size = validation.part_size_setting(part_size)
        self.concurrency = None if concurrency is None else validation.concurrency(concurrency)
        self.max_concurrency = validation.concurrency(max_concurrency)
        self.max_buffer_bytes = validation.max_buffer_bytes(max_buffer_bytes)
        self.max_bandwidth = bandwidth_setting(max_bandwidth)  # its timezone is set at execute
        self.upload_window, self.window_timezone, self.finish_by = upload_window, window_timezone, finish_by
        self.checksum_algorithm, self.checksum_type = checksum_algorithm, checksum_type
        self.encrypt, self.sse_kms_key_id, self.storage_class = encrypt, sse_kms_key_id, storage_class
        self.content_type, self.metadata, self.tags, self.acl_policy = content_type, metadata, tags, acl_policy
        self.extra_args = dict(extra_args or {})
        self.resume, self.keep_upload_for_retry = resume, keep_upload_for_retry
        self.adopt_quiet_after = validation.adopt_quiet_after(adopt_quiet_after)
        self.progress_interval = validation.seconds("progress_interval", progress_interval)
        check_rendered_arguments(self, rendered=False)  # again at execute, once templates are rendered
        check_arguments(self)
        check_schedule_arguments(self)

    def resolve_target(self) -> tuple[str, str]:
        """(bucket, key) from ``bucket`` + ``key`` or an ``s3://`` key, checked against S3's rules.

        The key is kept exactly as written (``?``, ``#``, ``%``, spaces, unicode): see ``s3_target``.
        """
        return object_target(self.bucket, self.key)

    @functools.cached_property
    def hook(self) -> S3MultipartHook:
        """The hook that builds this task's clients (from the connection; one per operator instance)."""
        return S3MultipartHook(aws_conn_id=self.aws_conn_id, verify=self.verify)

    # -- run ----------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        check_rendered_arguments(self)
        schedule = UploadSchedule.resolve(self, context, now=self._window_now)
        self._window, self._finish_by, self.max_bandwidth = schedule.window, schedule.finish_by, schedule.bandwidth
        schedule.wait_for_window(self.log, self._stop_if_killed)
        bucket, key = self.resolve_target()
        if self.command is not None:
            result = UploadResult(**self._upload_command_output(context, bucket, key))
        else:
            try:
                result = UploadResult(**self._upload_file(context, bucket, key))
            except UploadPaused as paused:
                has_store = retry_ledger(context, STATE_KEY, self.log) is not None
                reschedule_paused(self, context, paused, has_store=has_store)  # raises the reschedule
                raise
        self._stop_if_killed("the task was killed; failing it although the upload had finished")
        self._emit_metrics(result)
        log_summary(self.log, self.file or f"the output of {command_label(self.command or '')}", result)
        return result.to_dict()

    def _stop_if_killed(self, why: str = "the task was killed before the upload started") -> None:
        if self.hook.cancelled:
            raise UploadCancelledError(why)

    def _announce(self, context: Context, bucket: str, key: str, upload_id: str) -> None:
        """Make the UploadId known the moment it exists, in XCom, for people and cleanup (the hook has
        already recorded it in task_state_store for the retry)."""
        ti = context.get("ti")
        if ti is not None:
            ti.xcom_push(key="upload_id", value=upload_id)
            ti.xcom_push(key="multipart_upload", value={"bucket": bucket, "key": key, "upload_id": upload_id})

    def _upload_file(self, context: Context, bucket: str, key: str) -> dict[str, Any]:
        """Upload the file (``FileUploadSequence``): this try ends with its upload completed, aborted, or
        kept and recorded in task_state_store for the retry, as ``retry_plan`` allows."""
        if self.file is None:
            raise InvalidUploadRequest("give either file=... or command=...")
        return self.hook.upload_file(
            self.file,
            key,
            bucket,
            replace=self.replace,
            resume=self.resume,
            part_size=self.part_size,
            adopt_quiet_after=self.adopt_quiet_after,
            ledger=retry_ledger(context, STATE_KEY, self.log),
            retry=retry_plan(self, context),
            on_upload_started=functools.partial(self._announce, context, bucket, key),
            on_aborted=functools.partial(self._emit_metrics, None),
            clock=self._window_now,
            on_deadline=self._deadline_metric,
            **upload_arguments(self),
        )

    def _upload_command_output(self, context: Context, bucket: str, key: str) -> dict[str, Any]:
        """Stream the command's stdout; no resume (a stream cannot be replayed), so any failure aborts.
        Its UploadId is recorded in task_state_store while it runs, so that if this try dies where nothing
        can run (SIGKILL, OOM), the next try aborts that upload before starting its own."""
        assert self.command is not None
        return self.hook.upload_command(
            self.command,
            key,
            bucket,
            command_timeout=self.command_timeout,
            replace=self.replace,
            part_size=self.part_size,
            equal_parts=self.equal_parts,
            ledger=retry_ledger(context, STREAM_STATE_KEY, self.log),
            on_upload_started=functools.partial(self._announce, context, bucket, key),
            on_aborted=functools.partial(self._emit_metrics, None),
            **upload_arguments(self),
        )

    #: Called by name from the upload code: the figures of an upload (None: an abort), a deadline at risk.
    _emit_metrics = upload_metrics
    _deadline_metric = deadline_metric

    def on_kill(self) -> None:
        """Stop sending, abort this try's upload, and make sure ``execute`` ends failed.

        Airflow calls this from its SIGTERM handler (a kill, "mark failed" in the UI) while ``execute``
        is still running: whatever the phase (taking over the earlier try's upload, the existence check,
        the resume lookup, sending), the hook's cancel aborts the upload that is ours, and ``execute``
        raises UploadCancelledError. On ``execution_timeout`` Airflow calls this only after ``execute``
        has ended its upload like any failure (kept and recorded if Airflow will retry, else aborted):
        the cancel then finds nothing running, and nothing is touched.
        """
        if self.hook.cancel():
            self.log.warning("Task killed: aborting the multipart upload.")
        else:
            self.log.info(
                "on_kill after execute() ended (or before its upload started): nothing to stop; an upload that "
                "ended was already completed, aborted or kept for the retry."
            )

    # -- lineage ------------------------------------------------------------------------------

    def get_openlineage_facets_on_start(self) -> Any:
        """Input: the local file (or, for a command, the program that produced the stream, never its
        arguments, which may hold credentials); output: the S3 object, as the amazon provider's
        transfer operators report them. OpenLineage is imported lazily: it is an optional provider."""
        from airflow.providers.common.compat.openlineage.facet import Dataset
        from airflow.providers.openlineage.extractors import OperatorLineage

        bucket, key = self.resolve_target()
        namespace, name = ("command", program_name(self.command)) if self.command is not None else ("file", self.file)
        source = Dataset(namespace=namespace, name=str(name))
        return OperatorLineage(inputs=[source], outputs=[Dataset(namespace=f"s3://{bucket}", name=key)])

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return self.get_openlineage_facets_on_start()
