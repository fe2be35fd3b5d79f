"""MultipartUploadOperator: the Airflow glue around the upload engine.

The operator owns what only Airflow knows: templating, argument validation, XCom, the
task_state_store that lets a retry resume, whether a retry will follow, ``on_kill``, lineage and
metrics. Every S3 call goes through ``S3MultipartHook`` (which builds the clients from the connection,
so every connection extra keeps working) and the engine it runs (``airflow_mpu_provider.multipart``).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_mpu_provider import version_compat
from airflow_mpu_provider.hooks.multipart import (
    FileUpload,
    S3MultipartHook,
    check_object_arguments,
    first_stream_part_size,
    object_arguments,
)
from airflow_mpu_provider.multipart import validation
from airflow_mpu_provider.multipart.base_engine import BaseUploadEngine, upload_stays_usable
from airflow_mpu_provider.multipart.checksums.digests import DEFAULT_CHECKSUM_ALGORITHM, normalize_checksum_algorithm
from airflow_mpu_provider.multipart.checksums.whole_file import resolve_checksum_type
from airflow_mpu_provider.multipart.errors import (
    InvalidUploadRequest,
    MultipartUploadError,
    UploadCancelledError,
    UploadNotRecordedError,
)
from airflow_mpu_provider.multipart.file_engine import FileUploadEngine
from airflow_mpu_provider.multipart.options import DEFAULT_MAX_BUFFER_BYTES, UploadOptions
from airflow_mpu_provider.multipart.parallelism import DEFAULT_MAX_CONCURRENCY
from airflow_mpu_provider.multipart.parts.plan import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, PartPlan, plan_parts
from airflow_mpu_provider.multipart.progress import DEFAULT_PROGRESS_INTERVAL
from airflow_mpu_provider.multipart.result import UploadResult
from airflow_mpu_provider.multipart.resume import (
    DEFAULT_ADOPT_QUIET_AFTER,
    FoundUpload,
    hidden_object_args,
    object_args_fingerprint,
)
from airflow_mpu_provider.multipart.s3_target import object_target
from airflow_mpu_provider.multipart.schedule import UploadPaused
from airflow_mpu_provider.multipart.sources.command import command_label, find_bash, program_name
from airflow_mpu_provider.multipart.sources.file import FileSource
from airflow_mpu_provider.multipart.stream_engine import StreamUploadEngine
from airflow_mpu_provider.multipart.units import format_bytes, format_rate, plural
from airflow_mpu_provider.multipart.upload import MultipartUpload
from airflow_mpu_provider.multipart.windows import (
    BandwidthTimetable,
    UploadWindow,
    bandwidth_setting,
    deadline_at,
    finish_by_setting,
    resolve_timezone,
)
from airflow_mpu_provider.version_compat import AIRFLOW_V_3_3_PLUS, BaseOperator

if TYPE_CHECKING:
    try:
        from airflow.sdk import Context
    except ImportError:  # pragma: no cover
        from airflow.utils.context import Context  # type: ignore[no-redef]


def _is_template(value: Any) -> bool:
    """A string Airflow will render (validated once rendered, at execute)."""
    return isinstance(value, str) and "{" in value


#: task_state_store key of the resume record. Renaming it breaks the resume of in-flight retries.
STATE_KEY = "multipart_upload"
#: task_state_store key of a command's stream upload: {bucket, key, upload_id}. A stream is never
#: resumed; the record lets the next try abort the upload of a try that died (SIGKILL, OOM).
STREAM_STATE_KEY = "multipart_stream_upload"
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
        self._engine: BaseUploadEngine | None = None
        self._killed = False
        #: Whether execute() is running: on_kill after it ended must not touch what it left (see on_kill).
        self._executing = False
        #: The upload an earlier try recorded: ours from the first moment, aborted if this try ends it.
        self._ours: MultipartUpload | None = None
        #: Whether ListMultipartUploads worked in this try (None: not asked).
        self._listing_available: bool | None = None

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
                self._stop_if_killed()
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
        if self._state_store(context) is None:
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

    def object_args(self) -> dict[str, Any]:
        """CreateMultipartUpload arguments from the operator's arguments (``extra_args`` wins)."""
        return object_arguments(
            encrypt=self.encrypt,
            sse_kms_key_id=self.sse_kms_key_id,
            storage_class=self.storage_class,
            content_type=self.content_type,
            metadata=self.metadata,
            tags=self.tags,
            acl_policy=self.acl_policy,
            extra_args=self.extra_args,
        )

    def upload_options(self, checksum_algorithm: str | None) -> UploadOptions:
        return UploadOptions(
            concurrency=self.concurrency,
            max_concurrency=self.max_concurrency,
            max_buffer_bytes=self.max_buffer_bytes,
            max_bandwidth=self.max_bandwidth,
            upload_window=self._window if self.command is None else None,
            finish_by=self._finish_by if self.command is None else None,
            checksum_algorithm=checksum_algorithm,
            checksum_type=self.checksum_type,
            extra_args=self.object_args(),
            progress_interval=self.progress_interval,
            overwrite=self.replace,
        )

    @functools.cached_property
    def hook(self) -> S3MultipartHook:
        """The hook that builds this task's clients (from the connection; one per operator instance)."""
        return S3MultipartHook(aws_conn_id=self.aws_conn_id, verify=self.verify)

    def s3_client(self, options: UploadOptions, part_size: int) -> Any:
        """The client for the parts: the hook's tuned client, sized for the workers this part size allows."""
        return self.hook.upload_client_for(options, part_size)

    # -- resume -------------------------------------------------------------------------------

    def _state_store(self, context: Context) -> Any:
        return context.get("task_state_store") if AIRFLOW_V_3_3_PLUS else None

    def _resume_record(self, bucket: str, key: str, source: FileSource, plan: PartPlan, checksum: str | None) -> dict:
        fp = source.fingerprint
        return {
            "bucket": bucket,
            "key": key,
            "file": str(source.path),
            "size": fp.size,
            "mtime_ns": fp.mtime_ns,
            "inode": fp.inode,
            "part_size": plan.part_size,
            "checksum_algorithm": checksum,
            "checksum_type": resolve_checksum_type(self.checksum_type, checksum),
            # Binds what S3 does not show of an incomplete upload (ACL, content type, metadata, tags, encryption).
            "object_args": object_args_fingerprint(self.object_args()),
        }

    def _part_size_for(self, store: Any, source: FileSource) -> int | None:
        """``part_size``; or, left to the automatic rule, the part size an earlier try recorded for this very
        version of the file, so that an upload planned by another version's rule (16 MiB parts before #22)
        is resumed rather than aborted and restarted. The plan stays a function of the file and arguments:
        the record is part of them."""
        if self.part_size is not None or store is None:
            return self.part_size
        stored = store.get(STATE_KEY)
        if not (isinstance(stored, dict) and stored.get("upload_id")):
            return None
        fp = source.fingerprint
        same_file = (stored.get("file"), stored.get("size"), stored.get("mtime_ns"), stored.get("inode")) == (
            str(source.path),
            fp.size,
            fp.mtime_ns,
            fp.inode,
        )
        recorded = stored.get("part_size")
        if not same_file or not isinstance(recorded, int) or isinstance(recorded, bool):
            return None
        if not MIN_PART_SIZE <= recorded <= MAX_PART_SIZE or PartPlan(fp.size, recorded).count > MAX_PARTS:
            return None
        if recorded != plan_parts(fp.size).part_size:
            self.log.info("Keeping the earlier try's part size (%s) to resume its upload.", format_bytes(recorded))
        return recorded

    def take_over_recorded_upload(self, store: Any, upload: FileUpload, record: dict) -> str | None:
        """The UploadId an earlier try recorded in task_state_store, if this try can continue it.

        A recorded upload is ours from the moment it is read (``_ours``): whatever happens next, this
        try completes it, aborts it, or leaves it recorded for the retry. One that cannot be continued
        (another version of the file, or ``resume=False``) is aborted at once.
        """
        stored = store.get(STATE_KEY) if store is not None else None
        if not (isinstance(stored, dict) and stored.get("upload_id")):
            return None
        upload_id = str(stored["upload_id"])
        self._ours = upload.recorded_upload(
            stored.get("bucket", upload.bucket), stored.get("key", upload.key), upload_id
        )
        changed = sorted(k for k in record if stored.get(k) != record[k])
        if not changed and self.resume:
            self.log.info("Found upload %s to resume in task_state_store.", upload_id)
            return upload_id
        self.log.warning(
            "The earlier try's upload %s cannot be continued (%s); aborting it (it is this task's) and starting "
            "afresh.",
            upload_id,
            _why_not_continued(stored, changed) if changed else "resume=False",
        )
        self.hook.abort_upload(self._ours)  # if this fails, the record stays (see _after_failure)
        self._ours = None
        self._forget(store, STATE_KEY)
        return None

    def find_upload_to_adopt(self, upload: FileUpload, *, has_store: bool) -> list[FoundUpload]:
        """The found uploads (ListMultipartUploads, no record) quiet for ``adopt_quiet_after`` that show this
        task's settings, newest first; whether the listing worked decides, on Airflow < 3.3, whether a
        failed try may keep its upload."""
        if self.adopt_quiet_after is None:
            self.log.info("Not looking for uploads left at the key by others (adopt_quiet_after=None).")
            return []
        found = upload.find_upload_to_adopt(
            self.adopt_quiet_after,
            when_unlisted="" if has_store else " and a failed try's upload is aborted rather than kept",
        )
        self._listing_available = upload.listing_available
        return found

    def keep_for_retry(self, context: Context) -> bool:
        """Whether a failed try keeps its upload: only where the retry will look for it and take it.

        Airflow >= 3.3: the task_state_store record. Older Airflow has only ListMultipartUploads, and a
        found upload is adopted only after ``adopt_quiet_after`` of quiet: the upload is kept only if
        the retry waits at least that long, and aborted otherwise (nothing would continue it).
        """
        if not (self.keep_upload_for_retry and self.resume and self.will_retry(context)):
            return False
        if self._state_store(context) is not None:
            return True
        if self._listing_available is False:
            return False
        if self.adopt_quiet_after is None:
            self.log.info(
                "A failed try's upload will be aborted, not kept: without task_state_store (Airflow < 3.3) the retry "
                "could find it only with ListMultipartUploads, and adopt_quiet_after=None adopts no found upload."
            )
            return False
        hidden = hidden_object_args(self.object_args())
        if hidden:
            self.log.info(
                "A failed try's upload will be aborted, not kept: without task_state_store (Airflow < 3.3) the retry "
                "could find it only with ListMultipartUploads, and never adopts a found upload when the task sets "
                "%s (S3 does not show them for an incomplete upload).",
                ", ".join(hidden),
            )
            return False
        delay = validation.duration("retry_delay", self.retry_delay or 0)
        if delay < self.adopt_quiet_after:
            self.log.info(
                "A failed try's upload will be aborted, not kept: without task_state_store (Airflow < 3.3) the "
                "retry finds it only with ListMultipartUploads, and adopts it only after adopt_quiet_after (%s) "
                "of quiet, longer than retry_delay (%s). Make retry_delay >= adopt_quiet_after to resume.",
                self.adopt_quiet_after,
                delay,
            )
            return False
        return True

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
        self._executing = True
        try:
            return self._execute(context)
        finally:
            self._executing = False

    def _execute(self, context: Context) -> dict[str, Any]:
        self.check_rendered_arguments()
        self._resolve_schedule(context)
        self._reschedule_if_outside_window()
        bucket, key = self.resolve_target()
        checksum = normalize_checksum_algorithm(self.checksum_algorithm)
        resolve_checksum_type(self.checksum_type, checksum)  # refused here, before any S3 call
        if self.command is not None:
            result = self._upload_command_output(context, bucket, key, checksum)
        else:
            try:
                result = self._upload_file(context, bucket, key, checksum)
            except UploadPaused as paused:
                self._paused(context, paused)
                raise
        self._emit_metrics(result)
        if self._killed:
            raise UploadCancelledError("the task was killed; failing it although the upload had finished")
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

    def _announce(self, context: Context, bucket: str, key: str, resume_record: dict | None, upload_id: str) -> None:
        """Make the UploadId known the moment it exists: XCom for people and cleanup, task_state_store for retries."""
        ti = context.get("ti")
        if ti is not None:
            ti.xcom_push(key="upload_id", value=upload_id)
            ti.xcom_push(key="multipart_upload", value={"bucket": bucket, "key": key, "upload_id": upload_id})
        store = self._state_store(context)
        if store is not None and resume_record is not None:
            try:
                store.set(STATE_KEY, {**resume_record, "upload_id": upload_id})
            except Exception as e:  # inside the engine's scope: the upload is aborted, never kept unrecorded
                raise UploadNotRecordedError(
                    f"could not record upload {upload_id} of s3://{bucket}/{key} in task_state_store ({e}); it is "
                    "aborted, since a retry could not find it"
                ) from e

    def _run(self, engine: BaseUploadEngine, run: Callable[[], UploadResult]) -> UploadResult:
        """Run ``engine`` where ``on_kill`` can stop it (``_killed`` is set before ``_engine`` is read)."""
        self._engine = engine
        try:
            if self._killed:
                raise UploadCancelledError("the task was killed before the upload started")
            return run()
        except BaseException:
            if engine.upload is not None and engine.upload.aborted:
                self._emit_metrics(None)
            raise
        finally:
            self._engine = None

    def _upload_file(self, context: Context, bucket: str, key: str, checksum: str | None) -> UploadResult:
        """Upload the file; this try ends with its upload completed, aborted, or kept and recorded.

        Order matters: the earlier try's recorded upload is taken over first (so that a kill at any
        later point aborts it), ``replace=False`` is checked against the object before anything is
        created, and only then is an upload continued, adopted or created.
        """
        if self.file is None:
            raise InvalidUploadRequest("give either file=... or command=...")
        started = time.monotonic()
        store = self._state_store(context)
        with FileSource(self.file) as source:
            plan = plan_parts(source.size, self._part_size_for(store, source))
            options = self.upload_options(checksum)
            upload = self.hook.file_upload(
                source, plan, bucket, key, options, client=self.s3_client(options, plan.part_size)
            )
            record = self._resume_record(bucket, key, source, plan, checksum)
            try:
                resume_id = self.take_over_recorded_upload(store, upload, record)
                self._stop_if_killed()
                if not self.replace:
                    existing = upload.existing_object()
                    if existing is not None:
                        self._end_ours("the object already holds the file", store)
                        return upload.result_for_existing(existing, started)
                found: list[FoundUpload] = []
                if self.resume and resume_id is None:
                    found = self.find_upload_to_adopt(upload, has_store=store is not None)
                self._stop_if_killed()
                engine = upload.make_engine(functools.partial(self._announce, context, bucket, key, record))
                if engine.schedule is not None:
                    engine.schedule.now, engine.schedule.on_deadline = self._window_now, self._deadline_metric
                keep = self.keep_for_retry(context)
                run = functools.partial(engine.run, resume_upload_id=resume_id, adopt=found, keep_on_failure=keep)
                result = self._run(engine, run)
            except BaseException as error:
                self._after_failure(error, context, store, upload.engine)
                raise
        if self._killed:
            # Completed, but killed meanwhile: the task fails. The record stays, so that the retry finds
            # the upload gone, sees the object already is the file, and succeeds without sending anything.
            raise UploadCancelledError("the task was killed; failing it although the upload had finished")
        self._forget(store, STATE_KEY)
        self._ours = None
        return result

    def _stop_if_killed(self) -> None:
        if self._killed:
            raise UploadCancelledError("the task was killed before the upload started")

    def _after_failure(
        self, error: BaseException, context: Context, store: Any, engine: FileUploadEngine | None
    ) -> None:
        """End this try's upload after a failure, wherever it happened.

        Once the engine holds an upload it has already kept or aborted it; before that, the only
        upload that is ours is the one an earlier try recorded, and it is ended here the same way.
        """
        if engine is not None and engine.upload is not None:
            if store is not None and not engine.kept_for_resume and engine.upload.aborted:
                self._forget(store, STATE_KEY)  # aborted: nothing for the retry to look for
            # An abort that failed leaves the record, so that the next try finds the upload and ends it.
            return
        if self._ours is None:
            return
        paused = isinstance(error, UploadPaused)  # the window closed: kept for the next run, as for a retry
        if not self._killed and (paused or (upload_stays_usable(error) and self.keep_for_retry(context))):
            self.log.warning(
                "Keeping upload %s of s3://%s/%s for the retry (recorded in task_state_store).",
                self._ours.upload_id,
                self._ours.bucket,
                self._ours.key,
            )
            return
        self._end_ours(
            "this try failed and no retry will continue it" if not self._killed else "the task was killed", store
        )

    def _end_ours(self, why: str, store: Any) -> None:
        """Abort the earlier try's recorded upload (if any is left) and forget the record; an abort that
        fails keeps the record, so that the next try (or whoever reads task_state_store) still finds it."""
        ours, self._ours = self._ours, None
        if ours is not None:
            self.log.warning("Aborting upload %s of s3://%s/%s: %s.", ours.upload_id, ours.bucket, ours.key, why)
            try:
                self.hook.abort_upload(ours)
            except Exception as abort_error:  # the original error matters more; say what is left behind
                self.log.error(
                    "Could not abort multipart upload %s of s3://%s/%s (%s); it stays recorded in task_state_store "
                    "(key %r) for the next try to abort; else abort it by hand or let S3AbortStaleUploadsOperator "
                    "clean it up.",
                    ours.upload_id,
                    ours.bucket,
                    ours.key,
                    abort_error,
                    STATE_KEY,
                )
                return
        self._forget(store, STATE_KEY)

    def _forget(self, store: Any, state_key: str) -> None:
        """Clear a record whose upload is completed or gone; failing to is harmless (the next try finds the
        upload gone) and must neither fail a finished upload nor hide the error of a failed one."""
        if store is None:
            return
        try:
            store.delete(state_key)
        except Exception as e:
            self.log.warning("Could not clear %s in task_state_store (%s); a next try will find it gone.", state_key, e)

    def _upload_command_output(self, context: Context, bucket: str, key: str, checksum: str | None) -> UploadResult:
        """Stream the command's stdout; no resume (a stream cannot be replayed), so any failure aborts.

        The try owns its upload as a file upload's try does: the UploadId is recorded in
        task_state_store the moment it exists, so that if this try dies where nothing can run
        (SIGKILL, OOM), the next try aborts that upload before starting its own.
        """
        assert self.command is not None
        find_bash()  # before any request: without bash there is no pipefail, and nothing may be created
        first_part_size = first_stream_part_size(self.part_size)
        options = self.upload_options(checksum)
        client = self.s3_client(options, first_part_size)
        store = self._state_store(context)
        self._abort_dead_stream_try(store, client, options)
        if not self.replace:
            self.hook.check_key_free(client, bucket, key, options.extra_args)
        with self.hook.command_source(self.command, timeout=self.command_timeout) as source:
            engine = self.hook.stream_engine(
                source,
                bucket,
                key,
                options,
                first_part_size=first_part_size,
                growing=not self.equal_parts,
                on_upload_started=functools.partial(self._record_stream_upload, context, bucket, key),
                client=client,
            )
            try:
                result = self._run(engine, engine.run)
            except BaseException:
                if store is not None and self._stream_upload_gone(engine):
                    self._forget_stream_upload(store)  # aborted: nothing for the next try to clean up
                raise
        if store is not None:
            self._forget_stream_upload(store)
        return result

    def _forget_stream_upload(self, store: Any) -> None:
        """Clear the record (see ``_forget``: the next try's abort finds NoSuchUpload)."""
        self._forget(store, STREAM_STATE_KEY)

    def _record_stream_upload(self, context: Context, bucket: str, key: str, upload_id: str) -> None:
        """task_state_store first (what the next try needs if this one dies), then XCom (for people).

        Runs inside the engine's abort scope: if either raises, the fresh upload is aborted.
        """
        store = self._state_store(context)
        if store is not None:
            store.set(STREAM_STATE_KEY, {"bucket": bucket, "key": key, "upload_id": upload_id})
        self._announce(context, bucket, key, None, upload_id)

    def _abort_dead_stream_try(self, store: Any, client: Any, options: UploadOptions) -> None:
        """Abort the stream upload an earlier try of this task recorded and could not end (it died).

        It is ours (recorded by this task instance), a stream cannot be resumed, so it can only be
        aborted. If that fails (e.g. no s3:AbortMultipartUpload), this try goes on: the upload is
        left to S3AbortStaleUploadsOperator or a lifecycle rule, as the warning says.
        """
        stored = store.get(STREAM_STATE_KEY) if store is not None else None
        if not (isinstance(stored, dict) and stored.get("upload_id")):
            return
        upload_id = str(stored["upload_id"])
        where = f"s3://{stored.get('bucket')}/{stored.get('key')}"
        self.log.warning(
            "An earlier try's stream upload %s to %s was left behind (that try died); aborting it.", upload_id, where
        )
        try:
            self.hook.abort_upload(
                self.hook.upload_handle(
                    str(stored["bucket"]), str(stored["key"]), upload_id, extra_args=options.extra_args, client=client
                )
            )
        except MultipartUploadError as e:
            self.log.warning(
                "Could not abort the earlier try's stream upload %s to %s (%s); it needs s3:AbortMultipartUpload. "
                "S3AbortStaleUploadsOperator or a lifecycle rule (AbortIncompleteMultipartUpload) will remove it.",
                upload_id,
                where,
                e,
            )
        store.delete(STREAM_STATE_KEY)

    def _stream_upload_gone(self, engine: StreamUploadEngine) -> bool:
        """Whether the failed stream try left no upload: none was created, or the engine's abort is done.

        An abort that failed leaves the record, so that the next try aborts the upload.
        """
        upload = engine.upload
        return upload is None or not upload.upload_id or upload.aborted

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
        is still running: whatever the phase (taking over the earlier try's upload, the existence
        check, the resume lookup, sending), the upload that is ours is aborted. The engine's cancel
        makes ``execute`` raise once its workers stop.

        On ``execution_timeout`` Airflow raises inside ``execute`` first and calls this only after
        ``execute`` has ended: by then the try has already ended its upload like any failure (kept and
        recorded if Airflow will retry, else aborted), and nothing is touched here.
        """
        self._killed = True
        if not self._executing:
            self.log.info(
                "on_kill after execute() ended: its upload was already completed, aborted or kept for the retry."
            )
            return
        hook: S3MultipartHook | None = self.__dict__.get("hook")  # never built here, in a signal handler
        if hook is not None:
            hook.cancel()  # the command's pipeline, the existence check, and whatever else the hook runs
        engine, ours = self._engine, self._ours
        if engine is not None:
            self.log.warning("Task killed: aborting the multipart upload.")
            engine.cancel()
        if hook is not None and ours is not None and (engine is None or engine.upload is None):
            # The engine has not taken the recorded upload over yet: abort it here, off the signal
            # handler's thread (execute() aborts it again, harmlessly, when it sees the kill).
            self.log.warning("Task killed: aborting multipart upload %s.", ours.upload_id)
            threading.Thread(target=self._abort_quietly, args=(hook, ours), name="mpu-kill-abort", daemon=True).start()

    def _abort_quietly(self, hook: S3MultipartHook, upload: MultipartUpload) -> None:
        """Abort ``upload`` through the hook's abort client (the main one may be mid-request on this thread)."""
        try:
            hook.abort_upload(upload, quick=True)
        except Exception as e:  # execute() aborts again and reports what is left
            self.log.warning("Abort of %s during on_kill failed, execute() will retry it: %s", upload.upload_id, e)

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


def _why_not_continued(stored: Mapping[str, Any], changed: list[str]) -> str:
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


def _check_checksum_type(algorithm: str | None, checksum_type: Any) -> None:
    """Refuse a checksum_type that cannot work with checksum_algorithm when the DAG is parsed; an unknown
    algorithm is left for execute to report, as before checksum types existed."""
    try:
        normalized = normalize_checksum_algorithm(algorithm)
    except InvalidUploadRequest:
        return
    resolve_checksum_type(checksum_type, normalized)
