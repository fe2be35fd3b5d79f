"""MultipartUploadOperator: the Airflow glue around the upload engine.

The operator owns what only Airflow knows: templating, argument validation, XCom, the
task_state_store that lets a retry resume, whether a retry will follow, ``on_kill``, lineage and
metrics. Every S3 call goes through ``S3MultipartHook`` (which builds the clients from the connection,
so every connection extra keeps working) and the engine it runs (``airflow_mpu_provider.multipart``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_mpu_provider import version_compat
from airflow_mpu_provider.hooks.multipart import S3MultipartHook
from airflow_mpu_provider.multipart import (
    DEFAULT_ADOPT_QUIET_AFTER,
    DEFAULT_CHECKSUM_ALGORITHM,
    DEFAULT_MAX_BUFFER_BYTES,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_PROGRESS_INTERVAL,
    OBJECT_ARGUMENT_NAMES,
    BandwidthTimetable,
    RetryPlan,
    UploadCancelledError,
    UploadPaused,
    UploadResult,
    UploadWindow,
    bandwidth_setting,
    check_object_arguments,
    command_label,
    deadline_at,
    finish_by_setting,
    normalize_checksum_algorithm,
    object_target,
    program_name,
    resolve_checksum_type,
    resolve_timezone,
    validation,
)
from airflow_mpu_provider.multipart.errors import InvalidUploadRequest
from airflow_mpu_provider.multipart.units import format_bytes, format_rate, plural
from airflow_mpu_provider.operators.retry_ledger import STATE_KEY, STREAM_STATE_KEY, retry_ledger
from airflow_mpu_provider.version_compat import BaseOperator

if TYPE_CHECKING:
    try:
        from airflow.sdk import Context
    except ImportError:  # pragma: no cover
        from airflow.utils.context import Context  # type: ignore[no-redef]


def _is_template(value: Any) -> bool:
    """A string Airflow will render (validated once rendered, at execute)."""
    return isinstance(value, str) and "{" in value


#: Prefix of every metric the operator sends through Airflow's Stats (README: "Metrics").
METRICS_PREFIX = "mpu"
#: Seconds to the window's opening that a task started outside it waits for instead of rescheduling: a
#: reschedule costs a task process and a scheduler round trip, and one due at once can race the scheduler's
#: handling of the run that asked for it.
WAIT_FOR_OPENING = 10


class MultipartUploadOperator(BaseOperator):
    """
    Upload a local file to S3 as a parallel, resumable, verified multipart upload.

    The UploadId is pushed to XCom (keys ``upload_id`` and ``multipart_upload``) as soon as S3 hands
    it out. If the task fails and Airflow will retry it, the upload is kept and the retry resumes it:
    it re-verifies every part already in S3 against the local bytes and sends only what is missing.
    If no retry follows, or the task is killed (``on_kill``), the upload is aborted so that no
    invisible, billed parts stay behind.

    :param file: local path of the file to upload. (templated)
    :param command: instead of ``file``: a shell command whose standard output is uploaded as it is
        produced, with no temporary file (e.g. ``"pg_dump mydb | zstd"``; run with ``bash -o pipefail``).
        Nothing is completed unless it exits 0; a failure, a signal or ``command_timeout`` aborts the
        upload and fails the task with the tail of its stderr. bash is required (no pipefail without it).
        A stream cannot be resumed; on Airflow >= 3.3 its UploadId is kept in task_state_store so that
        the try after a SIGKILLed one aborts the dead try's upload. (templated)
    :param command_timeout: seconds (int, float, or a numeric string once rendered) or a ``timedelta``
        after which the whole command pipeline is killed (the task then fails); must be > 0. (templated)
    :param equal_parts: for ``command``: keep every part at ``part_size`` instead of letting parts grow
        (needed by stores such as Cloudflare R2; the stream may then be at most 10,000 x part_size).
    :param key: destination key, or a full ``s3://bucket/key`` URL when ``bucket`` is not given. (templated)
    :param bucket: destination bucket; None when ``key`` is an ``s3://`` URL. (templated)
    :param aws_conn_id: Airflow connection used through S3Hook (credentials, region, endpoint_url,
        config_kwargs, role assumption...). (templated)
    :param verify: whether to verify SSL certificates (False, or a CA bundle path), as in S3Hook.
    :param replace: overwrite an existing object at the key. If False (the default, like
        LocalFilesystemToS3Operator) an existing object fails the task before anything is uploaded.
    :param part_size: bytes per part (an int: ``8e6`` is a float and refused), 5 MiB..5 GiB. None (the
        default) picks 16 MiB, or the smallest size that fits the file into 10,000 parts, so any file up
        to 48.8 TiB works untuned. For a ``command``: the first part's size; parts double every 1,000
        parts (16 MiB: streams up to 12.7 TiB).
    :param concurrency: parts sent in parallel (an int, 1..10,000), fixed; None (the default) adapts it
        for a ``file``: it starts at 8 and adds parts while the aggregate rate rises, backs off on
        SlowDown/503, within ``max_concurrency`` (the result's ``concurrency_settled`` says where it
        settled); a ``command`` sends 8 at a time.
    :param max_concurrency: upper bound (an int, 1..10,000, default 64) on parts in flight when
        ``concurrency`` is None.
    :param max_buffer_bytes: cap (an int, in bytes) on part bytes held in memory at once (parts in flight,
        plus for a ``command`` the part being read); parallelism shrinks as parts grow so that memory stays
        within it. At least one part is always in flight, so a single part larger than the cap is the
        bound then (one part in memory at a time). The peak is returned as ``peak_buffer_bytes``.
    :param max_bandwidth: cap (an int, in bytes per second) on the upload's rate, all parallel parts
        together, like s3transfer's ``TransferConfig.max_bandwidth``: e.g. ``32 * 1024 * 1024`` keeps a
        nightly dump from saturating the production link. Smooth (a token bucket charged per socket
        write), for files and commands; re-sent bytes count too. None (the default): no cap. Or a
        timetable, ``{"08:00": 4 * MiB, "19:00": 64 * MiB, "23:00": None}`` (None: uncapped), in
        ``window_timezone``: each rate holds from its time until the next, switched while the upload runs.
    :param upload_window: for ``file``: the times of day when the upload may send, e.g. ``"22:00-06:00"``,
        or several ranges (``"22:00-06:00, 12:00-13:00"`` or a list), in ``window_timezone``. Started
        outside it, the task reschedules itself for the next opening (``up_for_reschedule``) before
        creating anything; when it closes mid-upload, no new part starts, the parts in flight finish, the
        upload is kept and recorded as this task's, and the task reschedules itself; the next run resumes
        it as a retry would. Refused with ``command`` (a stream cannot pause) and with ``resume=False``.
        (templated)
    :param window_timezone: IANA name of the timezone of ``upload_window``, ``max_bandwidth``'s timetable and
        an "HH:MM" ``finish_by``; None (default): the DAG's timezone, else UTC. (templated)
    :param finish_by: for ``file``: when the upload should be complete: "HH:MM" (the next such time), an ISO
        8601 date-time, a ``datetime`` or a ``timedelta`` from the start of the run. As soon as the upload
        cannot finish by then at the current rate (windows and timetable included) the log says so, once
        (again only if it could meanwhile), and ``mpu.deadline_at_risk`` is counted. (templated)
    :param checksum_algorithm: S3 checksum sent with every part and verified end to end: "CRC32C"
        (default), "CRC32", "SHA1", "SHA256". None sends Content-MD5 only and turns botocore's default
        checksums off, for S3-compatible stores that reject S3 checksums. "CRC64NVME" (S3's default for new
        objects) is full-object only.
    :param checksum_type: the object's checksum: "FULL_OBJECT", one CRC of the whole file (CRC32, CRC32C or
        CRC64NVME) that a restore checks with any CRC tool, whatever the part size; combined from the part
        CRCs, so resumed uploads get it too. "COMPOSITE": a checksum of the part checksums (``value-N``; the
        only type for SHA1/SHA256). None (default): FULL_OBJECT for the CRCs, COMPOSITE for SHA1/SHA256. A
        store that refuses FULL_OBJECT gets COMPOSITE, with a warning. The result's ``checksum`` and
        ``checksum_type`` say what the object got.
    :param encrypt: server-side encryption with S3-managed keys (SSE-S3, AES256).
    :param sse_kms_key_id: server-side encryption with this KMS key (SSE-KMS). (templated)
    :param storage_class: e.g. "STANDARD_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "DEEP_ARCHIVE". (templated)
    :param content_type: Content-Type of the object. (templated)
    :param metadata: user metadata (``x-amz-meta-*``). (templated)
    :param tags: object tags as a dict. (templated)
    :param acl_policy: canned ACL, e.g. "bucket-owner-full-control". (templated)
    :param extra_args: any other CreateMultipartUpload argument (e.g. ``CacheControl``, ``SSECustomerKey``,
        ``ExpectedBucketOwner``); wins over the arguments above. ``RequestPayer``, ``ExpectedBucketOwner``
        and the ``SSECustomer*`` ones are repeated on every later call that accepts them (parts, listing,
        completion, abort, HeadObject).
    :param resume: look for an earlier upload of this file to this key and continue it: the one an
        earlier try recorded (task_state_store, Airflow >= 3.3; its record binds the object settings, so
        changed settings start afresh), else one found with ListMultipartUploads that has been quiet for
        ``adopt_quiet_after`` and shows the task's settings (never when the task sets an ACL, content type,
        metadata, tags, encryption or another argument S3 does not show for an incomplete upload).
        False: always start afresh, never keep an upload.
    :param keep_upload_for_retry: when the task fails and Airflow will retry it, keep the upload for
        the retry to resume (True), or always abort on failure (False).
    :param adopt_quiet_after: a found upload (ListMultipartUploads, no record of this task) is adopted
        only when it was initiated, and its last part written, longer ago than this (seconds or a
        ``timedelta``; default 15 minutes): a younger one may be another run's live upload and is left
        alone. On Airflow < 3.3 a retry can only find its predecessor's upload this way, so a failed try
        keeps its upload for the retry only if ``retry_delay`` is at least this long. None: never adopt
        a found upload (only this task's own record resumes one); for buckets where others may create
        uploads at your keys.
    :param progress_interval: seconds (int or float, >= 0) or a ``timedelta`` between progress lines in
        the task log.
    """

    template_fields: Sequence[str] = (
        "file",
        "command",
        "command_timeout",
        "key",
        "bucket",
        "aws_conn_id",
        "sse_kms_key_id",
        "storage_class",
        "acl_policy",
        "content_type",
        "metadata",
        "tags",
        "upload_window",
        "window_timezone",
        "finish_by",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"metadata": "json", "tags": "json"}
    ui_color = "#f0eee4"

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
        self.file = file
        self.command = command
        self.command_timeout = command_timeout
        self.equal_parts = equal_parts
        self.key = key
        self.bucket = bucket
        self.aws_conn_id = aws_conn_id
        self.verify = verify
        self.replace = replace
        self.part_size = validation.part_size(part_size)
        self.concurrency = None if concurrency is None else validation.concurrency(concurrency)
        self.max_concurrency = validation.concurrency(max_concurrency)
        self.max_buffer_bytes = validation.max_buffer_bytes(max_buffer_bytes)
        self.upload_window = upload_window
        self.window_timezone = window_timezone
        self.finish_by = finish_by
        self.max_bandwidth = bandwidth_setting(max_bandwidth)  # its timezone is set at execute
        self.checksum_algorithm = checksum_algorithm
        self.checksum_type = checksum_type
        _check_checksum_type(checksum_algorithm, checksum_type)
        self.encrypt = encrypt
        self.sse_kms_key_id = sse_kms_key_id
        self.storage_class = storage_class
        self.content_type = content_type
        self.metadata = metadata
        self.tags = tags
        self.acl_policy = acl_policy
        self.extra_args = dict(extra_args or {})
        self.resume = resume
        self.keep_upload_for_retry = keep_upload_for_retry
        self.adopt_quiet_after = validation.adopt_quiet_after(adopt_quiet_after)
        self.progress_interval = validation.seconds("progress_interval", progress_interval)
        self.check_rendered_arguments(rendered=False)  # again at execute, once templates are rendered
        if (file is None) == (command is None):
            raise ValueError(
                "give exactly one of file=... (a local file) or command=... (a command whose output to upload)"
            )
        check_object_arguments(encrypt=encrypt, sse_kms_key_id=sse_kms_key_id, extra_args=self.extra_args)
        self._check_schedule_arguments()
        #: This run's window and deadline, resolved at execute (timezone, rendered templates).
        self._window: UploadWindow | None = None
        self._finish_by: Any = None

    # -- inputs -------------------------------------------------------------------------------

    def check_rendered_arguments(self, *, rendered: bool = True) -> None:
        """Refuse templated arguments of the wrong type: at construction (but for templates, which Airflow
        has not rendered yet) and at execute, once rendered, before any S3 call. ``command_timeout``
        becomes seconds (a rendered "3600" included)."""
        if self.command_timeout is not None and (rendered or not _is_template(self.command_timeout)):
            self.command_timeout = validation.seconds(
                "command_timeout", self.command_timeout, positive=True, numeric_strings=True
            )
        for name in ("aws_conn_id", "sse_kms_key_id", "storage_class", "acl_policy"):
            validation.optional_text(name, getattr(self, name))

    def _check_schedule_arguments(self) -> None:
        """Refuse a window or deadline that cannot work, when the DAG is parsed (templates: at execute)."""
        if self.command is not None and (self.upload_window is not None or self.finish_by is not None):
            raise InvalidUploadRequest(
                "upload_window and finish_by work for file=... uploads only: a command's output is a stream, which "
                "cannot pause and resume, and whose size is unknown. Write the output to a file first, or drop them."
            )
        if self.upload_window is not None and not version_compat.AIRFLOW_V_3_1_8_PLUS:
            raise InvalidUploadRequest(
                "upload_window needs Airflow >= 3.1.8: older schedulers run a task that rescheduled itself again at "
                "once instead of at its reschedule date (seen on 3.1.3), so the task would start over and over "
                "outside its window. Upgrade Airflow, or schedule the DAG inside the window without upload_window."
            )
        if self.upload_window is not None and not self.resume:
            raise InvalidUploadRequest(
                "upload_window needs resume=True: the next window continues the upload this one paused."
            )
        if self.window_timezone is not None and not _is_template(self.window_timezone):
            resolve_timezone(self.window_timezone)
        if self.upload_window is not None and not _is_template(self.upload_window):
            UploadWindow.parse(self.upload_window, self._timezone())
        if not _is_template(self.finish_by):
            finish_by_setting(self.finish_by)

    def _timezone(self, context: Context | None = None) -> Any:
        """``window_timezone``, else the DAG's timezone, else UTC."""
        if self.window_timezone is not None and not _is_template(self.window_timezone):
            return resolve_timezone(self.window_timezone)
        dag = (context or {}).get("dag") or (self.dag if self.has_dag() else None)
        return resolve_timezone(getattr(dag, "timezone", None))

    def _resolve_schedule(self, context: Context | None = None) -> None:
        """This run's window, timetable timezone and deadline, from the rendered arguments."""
        self._check_schedule_arguments()
        tz = self._timezone(context)
        self._window = UploadWindow.parse(self.upload_window, tz) if self.upload_window is not None else None
        if isinstance(self.max_bandwidth, BandwidthTimetable):
            self.max_bandwidth = BandwidthTimetable(self.max_bandwidth.entries, tz)
        self._finish_by = deadline_at(finish_by_setting(self.finish_by), tz, self._window_now())

    def _window_now(self) -> Any:
        """The wall clock windows and deadlines are judged by (tests replace it)."""
        from datetime import UTC, datetime

        return datetime.now(UTC)

    def _reschedule_if_outside_window(self) -> None:
        """Started outside the upload window: reschedule for its next opening before anything is created."""
        if self._window is None or self.command is not None:
            return
        now = self._window_now()
        if self._window.is_open(now):
            return
        opening = self._window.next_opening(now)
        wait = (opening - now).total_seconds()
        if wait <= WAIT_FOR_OPENING:
            self.log.info("Outside the upload window %s; it opens in %.1f s: waiting.", self._window.describe(), wait)
            until = time.monotonic() + wait
            while (left := until - time.monotonic()) > 0:
                if self.hook.cancelled:
                    raise UploadCancelledError("the task was killed before the upload started")
                time.sleep(min(0.5, left))
            return
        self.log.info(
            "Outside the upload window %s: nothing is sent now; rescheduled for its next opening, %s.",
            self._window.describe(),
            opening.isoformat(timespec="seconds"),
        )
        self._raise_reschedule(opening)

    def _raise_reschedule(self, when: Any) -> None:
        from airflow.exceptions import AirflowRescheduleException

        raise AirflowRescheduleException(when)

    def _paused(self, context: Context, paused: UploadPaused) -> None:
        """The window closed mid-upload (kept and recorded, like a failed try's upload for its retry): say
        what is stored and left, the rate, when it resumes and the projected finish, in the log and XCom;
        count the pause; reschedule for the next opening."""
        ti = context.get("ti")
        if ti is not None:
            ti.xcom_push(key="upload_paused", value=paused.to_dict())
        self._emit_pause_metrics(paused)
        if retry_ledger(context, STATE_KEY, self.log) is None:
            self.log.warning(
                "No task_state_store (Airflow < 3.3): the next run can find upload %s only with ListMultipartUploads, "
                "once it has been quiet for adopt_quiet_after (%s), and continues it only if it may adopt it and its "
                "parts verify; otherwise it starts afresh and this upload is left for S3AbortStaleUploadsOperator or "
                "a lifecycle rule.",
                paused.upload_id,
                self.adopt_quiet_after,
            )
        self.log.info(
            "Paused until the upload window opens again at %s: upload %s kept and recorded for the next run; the "
            "task is rescheduled (up_for_reschedule; try_number and retries untouched).",
            paused.resumes_at.isoformat(timespec="seconds"),
            paused.upload_id,
        )
        self._raise_reschedule(paused.resumes_at)

    def _emit_pause_metrics(self, paused: UploadPaused) -> None:
        """``mpu.pauses`` and the bytes this run sent before the window closed (see ``_emit_metrics``)."""
        try:
            from airflow.providers.common.compat.sdk import Stats

            tags = {"dag_id": self.dag_id, "task_id": self.task_id}
            Stats.incr(f"{METRICS_PREFIX}.pauses", tags=tags)
            Stats.incr(f"{METRICS_PREFIX}.bytes_sent", paused.sent_bytes, tags=tags)
        except Exception as e:
            self.log.warning("Could not send the pause metrics (this does not change the task's outcome): %s", e)

    def _deadline_metric(self, on_time: bool, projected: Any) -> None:
        """``mpu.deadline_at_risk``: counted each time the projection passes ``finish_by``."""
        if on_time:
            return
        try:
            from airflow.providers.common.compat.sdk import Stats

            Stats.incr(f"{METRICS_PREFIX}.deadline_at_risk", tags={"dag_id": self.dag_id, "task_id": self.task_id})
        except Exception as e:
            self.log.warning("Could not send the deadline metric: %s", e)

    def resolve_target(self) -> tuple[str, str]:
        """(bucket, key) from ``bucket`` + ``key`` or an ``s3://`` key, checked against S3's rules.

        The key is kept exactly as written (``?``, ``#``, ``%``, spaces, unicode): see ``s3_target``.
        """
        return object_target(self.bucket, self.key)

    def upload_arguments(self) -> dict[str, Any]:
        """What this try's ``UploadOptions`` are built from (``UploadOptions.from_arguments``, in the hook):
        the tuning, checksum and object arguments; for a file, this run's window and deadline too."""
        arguments = {
            "concurrency": self.concurrency,
            "max_concurrency": self.max_concurrency,
            "max_buffer_bytes": self.max_buffer_bytes,
            "max_bandwidth": self.max_bandwidth,
            "checksum_algorithm": self.checksum_algorithm,
            "checksum_type": self.checksum_type,
            "progress_interval": self.progress_interval,
            **{name: getattr(self, name) for name in OBJECT_ARGUMENT_NAMES},
        }
        if self.command is None:
            arguments.update(upload_window=self._window, finish_by=self._finish_by)
        return arguments

    @functools.cached_property
    def hook(self) -> S3MultipartHook:
        """The hook that builds this task's clients (from the connection; one per operator instance)."""
        return S3MultipartHook(aws_conn_id=self.aws_conn_id, verify=self.verify)

    # -- retries ------------------------------------------------------------------------------

    def retry_plan(self, context: Context) -> RetryPlan | None:
        """How Airflow will run this task again if this try fails (None: it will not, or the upload must
        not be kept for it): the engine keeps a failed try's upload only where that retry will find it."""
        if not (self.keep_upload_for_retry and self.resume and self.will_retry(context)):
            return None
        return RetryPlan(delay=validation.duration("retry_delay", self.retry_delay or 0))

    def will_retry(self, context: Context) -> bool:
        """Whether Airflow will run this task again if this try fails."""
        ti = context.get("ti")
        from_server = getattr(ti, "_ti_context_from_server", None)
        if from_server is not None and hasattr(from_server, "should_retry"):
            return bool(from_server.should_retry)
        try_number, max_tries = getattr(ti, "try_number", None), getattr(ti, "max_tries", None)
        if isinstance(try_number, int) and isinstance(max_tries, int):
            return try_number <= max_tries
        return bool(self.retries)

    # -- run ----------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        return self._execute(context)

    def _execute(self, context: Context) -> dict[str, Any]:
        self.check_rendered_arguments()
        self._resolve_schedule(context)
        self._reschedule_if_outside_window()
        bucket, key = self.resolve_target()
        if self.command is not None:
            result = UploadResult(**self._upload_command_output(context, bucket, key))
        else:
            try:
                result = UploadResult(**self._upload_file(context, bucket, key))
            except UploadPaused as paused:
                self._paused(context, paused)
                raise
        if self.hook.cancelled:  # killed after the upload had finished: the task still fails
            raise UploadCancelledError("the task was killed; failing it although the upload had finished")
        self._emit_metrics(result)
        self.log.info(
            "Uploaded %s to s3://%s/%s: %s (%d sent now, %d resumed), ETag %s, %s in %.1f s (%s).",
            self.file or f"the output of {command_label(self.command or '')}",
            bucket,
            key,
            plural(result.parts, "part"),
            result.parts_sent,
            result.parts_resumed,
            result.etag,
            format_bytes(result.bytes_sent),
            result.seconds,
            format_rate(result.bytes_sent / result.seconds if result.seconds > 0 else 0.0),
        )
        return result.to_dict()

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
            retry=self.retry_plan(context),
            on_upload_started=functools.partial(self._announce, context, bucket, key),
            on_aborted=functools.partial(self._emit_metrics, None),
            clock=self._window_now,
            on_deadline=self._deadline_metric,
            **self.upload_arguments(),
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
            **self.upload_arguments(),
        )

    def _emit_metrics(self, result: UploadResult | None) -> None:
        """Send the upload's figures to Airflow's metrics (StatsD or OpenTelemetry, whichever the
        deployment configured): ``result`` after a completed upload, None after an abort.

        ``Stats`` comes from the common.compat provider: that is the instance the task runner configures
        on every Airflow version. On 3.3, ``airflow.observability.stats`` is a second copy that only an
        executor process configures, so its metrics reach StatsD from LocalExecutor tasks (forked from
        it) and are silently dropped from tasks that no executor forked. Metrics never fail an upload.
        """
        try:
            from airflow.providers.common.compat.sdk import Stats

            tags = {"dag_id": self.dag_id, "task_id": self.task_id}
            if result is None:
                Stats.incr(f"{METRICS_PREFIX}.aborts", tags=tags)
                return
            Stats.incr(f"{METRICS_PREFIX}.uploads", tags=tags)
            Stats.incr(f"{METRICS_PREFIX}.bytes_sent", result.bytes_sent, tags=tags)
            Stats.incr(f"{METRICS_PREFIX}.bytes_resumed", result.bytes_resumed, tags=tags)
            Stats.incr(f"{METRICS_PREFIX}.parts_sent", result.parts_sent, tags=tags)
            Stats.timing(f"{METRICS_PREFIX}.duration", result.seconds * 1000, tags=tags)
            if result.seconds > 0:
                Stats.gauge(f"{METRICS_PREFIX}.throughput", round(result.bytes_sent / result.seconds), tags=tags)
        except Exception as e:
            self.log.warning("Could not send the upload metrics (this does not change the task's outcome): %s", e)

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
        if self.command is not None:
            source = Dataset(namespace="command", name=program_name(self.command))
        else:
            source = Dataset(namespace="file", name=str(self.file))
        return OperatorLineage(inputs=[source], outputs=[Dataset(namespace=f"s3://{bucket}", name=key)])

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return self.get_openlineage_facets_on_start()


def _check_checksum_type(algorithm: str | None, checksum_type: Any) -> None:
    """Refuse a checksum_type that cannot work with checksum_algorithm when the DAG is parsed; an unknown
    algorithm is left for execute to report, as before checksum types existed."""
    try:
        normalized = normalize_checksum_algorithm(algorithm)
    except InvalidUploadRequest:
        return
    resolve_checksum_type(checksum_type, normalized)
