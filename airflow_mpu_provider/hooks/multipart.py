"""S3MultipartHook: the amazon provider's S3Hook, plus what large multipart uploads need.

Built on ``S3Hook`` so that every connection extra users know (credentials, ``role_arn``,
``region_name``, ``endpoint_url``, ``config_kwargs``, ``verify``) keeps working, and usable wherever a
hook is: operators, ``@task`` functions, callbacks, scripts. It is the one place that builds the
clients the engine needs, tuned for many parallel parts, and it owns the S3 work the operators would
otherwise do themselves: the ``replace=False`` check, finding an upload to adopt, aborting.

    from airflow_mpu_provider.hooks.multipart import S3MultipartHook

    hook = S3MultipartHook(aws_conn_id="aws_default")
    result = hook.upload_file("/data/dump.sql", "s3://backups/postgres/dump.sql", storage_class="STANDARD_IA")
    hook.object_matches("/data/dump.sql", "s3://backups/postgres/dump.sql")  # True
    report = hook.abort_stale_uploads("backups", "postgres/", older_than=timedelta(days=2))

The ownership rules are the operator's: an upload this hook created is aborted when its call fails;
an upload it finds (ListMultipartUploads) is adopted only when it has been quiet for
``adopt_quiet_after`` and its stored parts verify against the local bytes, and is otherwise left
alone; ``replace=False`` is checked against the object before anything is created.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from botocore.config import Config
from botocore.exceptions import ClientError

from airflow_mpu_provider.multipart import validation
from airflow_mpu_provider.multipart.checksums.compare import NOT_FOUND_CODES, ObjectComparison, compare_object
from airflow_mpu_provider.multipart.checksums.digests import DEFAULT_CHECKSUM_ALGORITHM, normalize_checksum_algorithm
from airflow_mpu_provider.multipart.checksums.whole_file import resolve_checksum_type
from airflow_mpu_provider.multipart.errors import (
    InvalidUploadRequest,
    S3UploadError,
    UploadCancelledError,
    s3_error,
)
from airflow_mpu_provider.multipart.file_engine import FileUploadEngine
from airflow_mpu_provider.multipart.options import DEFAULT_CONCURRENCY, UploadOptions
from airflow_mpu_provider.multipart.parts.plan import DEFAULT_PART_SIZE, PartPlan, plan_parts
from airflow_mpu_provider.multipart.request_args import request_args
from airflow_mpu_provider.multipart.result import UploadResult, result_for_existing_object
from airflow_mpu_provider.multipart.resume import (
    DEFAULT_ADOPT_QUIET_AFTER,
    LISTING_UNAVAILABLE_CODES,
    FoundUpload,
    find_adoptable_uploads,
)
from airflow_mpu_provider.multipart.s3_target import bucket_and_path, object_target
from airflow_mpu_provider.multipart.sources.command import CommandSource, command_label, find_bash, inline_values
from airflow_mpu_provider.multipart.sources.file import FileSource
from airflow_mpu_provider.multipart.sources.stream import as_stream
from airflow_mpu_provider.multipart.stale import DEFAULT_OLDER_THAN, StaleUploadSweep
from airflow_mpu_provider.multipart.stream_engine import Stream, StreamUploadEngine
from airflow_mpu_provider.multipart.upload import OBJECT_ARGS, MultipartUpload, head_object
from airflow_mpu_provider.multipart.windows import (
    BandwidthTimetable,
    UploadWindow,
    bandwidth_setting,
    deadline_at,
    finish_by_setting,
    resolve_timezone,
)
from airflow_mpu_provider.version_compat import secrets_masker

#: Seconds the abort started by a cancel waits on the network: it races a kill's grace period, and the
#: upload's own thread aborts again through the main client once its parts have stopped.
ABORT_TIMEOUT = 5
#: Retries per request in the main client (botocore's ``max_attempts``: 11 attempts in all): a long upload
#: must ride out a flaky network; standard mode backs off exponentially and spends a shared retry quota,
#: so a dead endpoint still fails in minutes.
UPLOAD_RETRIES = 10
#: HeadObject codes that mean "forbidden": for a missing key, the answer to a role without s3:ListBucket.
FORBIDDEN_CODES = frozenset({"403", "AccessDenied", "Forbidden"})
#: The operator's friendly arguments that become CreateMultipartUpload arguments (``object_arguments``).
OBJECT_ARGUMENT_NAMES = (
    "encrypt",
    "sse_kms_key_id",
    "storage_class",
    "content_type",
    "metadata",
    "tags",
    "acl_policy",
    "extra_args",
)
#: Checks of the UploadOptions fields callers pass by name; any other field is forwarded as given.
_OPTION_CHECKS: dict[str, Callable[[Any], Any]] = {
    "concurrency": lambda value: None if value is None else validation.concurrency(value),
    "max_concurrency": validation.concurrency,
    "max_buffer_bytes": validation.max_buffer_bytes,
    "max_bandwidth": bandwidth_setting,
    "checksum_algorithm": normalize_checksum_algorithm,
    "progress_interval": lambda value: validation.seconds("progress_interval", value),
}


def check_object_arguments(
    *, encrypt: bool = False, sse_kms_key_id: str | None = None, extra_args: Mapping[str, Any] | None = None
) -> None:
    """Refuse contradictory or unknown object arguments before anything is sent (ValueError)."""
    if encrypt and sse_kms_key_id:
        raise ValueError("use either encrypt=True (SSE-S3) or sse_kms_key_id (SSE-KMS), not both")
    unknown = set(extra_args or {}) - OBJECT_ARGS
    if unknown:
        raise ValueError(
            f"extra_args {sorted(unknown)} are not CreateMultipartUpload arguments; allowed: {sorted(OBJECT_ARGS)}"
        )


def object_arguments(
    *,
    encrypt: bool = False,
    sse_kms_key_id: str | None = None,
    storage_class: str | None = None,
    content_type: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    acl_policy: str | None = None,
    extra_args: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """CreateMultipartUpload arguments from the operator's friendly arguments (``extra_args`` wins)."""
    check_object_arguments(encrypt=encrypt, sse_kms_key_id=sse_kms_key_id, extra_args=extra_args)
    args: dict[str, Any] = {}
    if encrypt:
        args["ServerSideEncryption"] = "AES256"
    if sse_kms_key_id:
        args["ServerSideEncryption"] = "aws:kms"
        args["SSEKMSKeyId"] = sse_kms_key_id
    if storage_class:
        args["StorageClass"] = storage_class
    if content_type:
        args["ContentType"] = content_type
    if metadata:
        args["Metadata"] = {str(k): str(v) for k, v in metadata.items()}
    if tags:
        args["Tagging"] = urllib.parse.urlencode({str(k): str(v) for k, v in tags.items()})
    if acl_policy:
        args["ACL"] = acl_policy
    args.update(extra_args or {})
    return args


def upload_options(*, replace: bool, **options: Any) -> UploadOptions:
    """``UploadOptions`` from keyword arguments: any of its fields (checked where a check exists, the
    others forwarded as given, so fields added later work at once) plus the friendly object arguments.

    ``replace`` becomes ``overwrite`` (False completes only if the key is still free).
    """
    fields = {f.name for f in dataclasses.fields(UploadOptions)} - {"overwrite", "extra_args"}
    unknown = set(options) - fields - set(OBJECT_ARGUMENT_NAMES)
    if unknown:
        raise TypeError(
            f"unknown upload options {sorted(unknown)}; allowed: {sorted(fields | set(OBJECT_ARGUMENT_NAMES))} "
            "(and replace, resume, part_size, adopt_quiet_after)"
        )
    chosen = {name: _OPTION_CHECKS.get(name, _as_is)(value) for name, value in options.items() if name in fields}
    extra = object_arguments(**{name: value for name, value in options.items() if name in OBJECT_ARGUMENT_NAMES})
    settings = UploadOptions(**chosen, extra_args=extra, overwrite=replace)
    resolve_checksum_type(settings.checksum_type, settings.checksum_algorithm)  # refused before any request
    return settings


def _as_is(value: Any) -> Any:
    return value


def _scheduled(options: dict[str, Any], window_timezone: Any) -> dict[str, Any]:
    """``options`` with ``upload_window``, a ``max_bandwidth`` timetable and ``finish_by`` in ``window_timezone``."""
    tz = resolve_timezone(window_timezone)
    scheduled = dict(options)
    if scheduled.get("upload_window") is not None:
        scheduled["upload_window"] = UploadWindow.parse(scheduled["upload_window"], tz)
    if isinstance(scheduled.get("max_bandwidth"), Mapping):
        scheduled["max_bandwidth"] = BandwidthTimetable.parse(scheduled["max_bandwidth"], tz)
    if scheduled.get("finish_by") is not None:
        scheduled["finish_by"] = deadline_at(finish_by_setting(scheduled["finish_by"]), tz, datetime.now(UTC))
    return scheduled


def _refuse_windows_for_streams(options: Mapping[str, Any]) -> None:
    if options.get("upload_window") is not None or options.get("finish_by") is not None:
        raise InvalidUploadRequest(
            "upload_window and finish_by work for files only: a stream cannot pause and resume, and its size is "
            "unknown. Upload a file (upload_file) to use them."
        )


def first_stream_part_size(part_size: Any) -> int:
    """A stream's first part size: ``part_size`` (checked as a file's is) or the default 16 MiB."""
    first = validation.part_size(part_size) or DEFAULT_PART_SIZE
    plan_parts(first, first)  # the same part-size checks as for a file
    return first


def explain_forbidden_head(
    client: Any, bucket: str, key: str, error: S3UploadError, extra_args: Mapping[str, Any]
) -> S3UploadError | None:
    """Why the existence check's HeadObject was answered 403, as an error to raise (None: the key is free).

    A HEAD answer has no body, so a 403 does not say whether the credentials are wrong or a permission
    is missing. A one-byte GetObject of the key does: AccessDenied there is, on AWS, what a missing key
    looks like to a role without s3:ListBucket.
    """
    try:
        client.get_object(Bucket=bucket, Key=key, Range="bytes=0-0", **request_args(client, "GetObject", extra_args))
    except ClientError as e:
        probe = s3_error(e, operation="GetObject", bucket=bucket, key=key, upload_id=None)
        if probe.code in NOT_FOUND_CODES:
            return None
        if probe.code not in FORBIDDEN_CODES:
            return probe  # e.g. SignatureDoesNotMatch, InvalidAccessKeyId: with their own hints
    else:
        return error
    return S3UploadError(
        f"HeadObject on s3://{bucket}/{key} was refused ({error.code}), so replace=False cannot check whether "
        "the key already holds an object. S3 answers 403 rather than 404 for a missing key when the role "
        f"lacks s3:ListBucket: grant s3:ListBucket on arn:aws:s3:::{bucket} (and s3:GetObject on its objects), "
        "or set replace=True to upload without the check.",
        code="AccessDenied",
        operation="HeadObject",
        bucket=bucket,
        key=key,
        upload_id=None,
    )


def _object_exists_error(bucket: str, key: str, why: str = "") -> S3UploadError:
    return S3UploadError(
        f"s3://{bucket}/{key} already exists; set replace=True to overwrite it, or use another key.{why}",
        code="ObjectExists",
        operation="HeadObject",
        bucket=bucket,
        key=key,
        upload_id=None,
    )


class FileUpload:
    """One file's upload to one key, as the steps the ownership rules order: take over a recorded
    upload, check the object (``replace=False``), find an upload to adopt, run the engine.

    ``S3MultipartHook.upload_file`` runs them in a row; the operator runs them with its Airflow steps
    (task_state_store, XCom, the retry decision) in between. Made by ``S3MultipartHook.file_upload``.
    """

    def __init__(
        self,
        hook: S3MultipartHook,
        client: Any,
        *,
        bucket: str,
        key: str,
        source: FileSource,
        plan: PartPlan,
        options: UploadOptions,
    ) -> None:
        self.hook = hook
        self.client = client
        self.bucket = bucket
        self.key = key
        self.source = source
        self.plan = plan
        self.options = options
        self.log = hook.log
        #: The engine of ``run`` once it started (its upload, whether it kept it for a resume).
        self.engine: FileUploadEngine | None = None
        #: Whether ListMultipartUploads worked (None: not asked yet).
        self.listing_available: bool | None = None

    def recorded_upload(self, bucket: str, key: str, upload_id: str) -> MultipartUpload:
        """The handle of an upload an earlier run recorded (ours: it may be continued or aborted)."""
        return self.hook.upload_handle(bucket, key, upload_id, extra_args=self.options.extra_args, client=self.client)

    def existing_object(self) -> ObjectComparison | None:
        """For ``replace=False``: None if the key is free; the comparison if the object already holds
        exactly the file (nothing needs uploading); otherwise S3UploadError(ObjectExists), raised
        before anything is created."""
        comparison = self.hook.compare(
            self.client, self.bucket, self.key, self.source, self.options.extra_args, self.plan
        )
        if comparison is None or not comparison.exists:
            return None
        if comparison.matches:
            (self.log.info if comparison.collision_resistant else self.log.warning)(
                "s3://%s/%s already holds exactly %s (%s compared): nothing to upload (replace=False).",
                self.bucket,
                self.key,
                self.source.description,
                comparison.detail,
            )
            return comparison
        raise _object_exists_error(self.bucket, self.key, f" It is not this file: {comparison.detail}.")

    def result_for_existing(self, comparison: ObjectComparison, started: float) -> UploadResult:
        return result_for_existing_object(
            comparison,
            bucket=self.bucket,
            key=self.key,
            plan=self.plan,
            checksum_algorithm=self.options.checksum_algorithm,
            started=started,
        )

    def find_upload_to_adopt(self, quiet_after: timedelta, *, when_unlisted: str = "") -> list[FoundUpload]:
        """The found uploads (ListMultipartUploads, no record) quiet for ``quiet_after`` that show this
        upload's settings, newest first (``run`` adopts the first whose parts verify), or [].

        A store or role without ListMultipartUploads degrades: one warning (``when_unlisted`` adds what
        else that costs the caller), no resume across runs, and the upload goes on afresh.
        """
        try:
            found = find_adoptable_uploads(
                self.client,
                self.bucket,
                self.key,
                self.plan,
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
            self.log.warning(
                "ListMultipartUploads is not available on s3://%s (%s): resume across runs is off, so an upload an "
                "earlier run left is not continued%s. Uploading afresh. To turn it on, grant "
                "s3:ListBucketMultipartUploads on arn:aws:s3:::%s (a store without the API cannot).",
                self.bucket,
                e.code,
                when_unlisted,
                self.bucket,
            )
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

    def make_engine(self, on_upload_started: Callable[[str], None] | None = None) -> FileUploadEngine:
        """The engine for this file (before ``run``: a caller may hold it to cancel it)."""
        self.engine = FileUploadEngine(
            self.client,
            bucket=self.bucket,
            key=self.key,
            source=self.source,
            plan=self.plan,
            options=self.options,
            log=self.log,
            on_upload_started=on_upload_started,
            abort_client=self.hook.get_abort_client(),
        )
        return self.engine

    def run(
        self,
        *,
        resume_upload_id: str | None = None,
        adopt: FoundUpload | Sequence[FoundUpload] | None = None,
        keep_on_failure: bool = False,
    ) -> UploadResult:
        """Run the engine made by ``make_engine``; ``S3MultipartHook.cancel`` stops it from any thread."""
        engine = self.engine if self.engine is not None else self.make_engine()
        with self.hook.cancelling(engine.cancel):
            return engine.run(resume_upload_id=resume_upload_id, adopt=adopt, keep_on_failure=keep_on_failure)


def mask_command_secrets(command: str) -> Callable[[Any], Any]:
    """Register what ``command`` carries in clear with Airflow's secrets masker (URL passwords, values of
    names the masker deems sensitive, e.g. ``PGPASSWORD=...``); returns the masker's ``redact``."""
    redact, mask_secret = secrets_masker()
    passwords, pairs = inline_values(command)
    for value in passwords + [value for name, value in pairs if redact(value, name) != value]:
        mask_secret(value)
    return redact


class S3MultipartHook(S3Hook):
    """S3Hook with the uploads, tuned clients, cancellation and housekeeping of resumable multipart uploads.

    :param aws_conn_id: the Airflow AWS connection, exactly as for S3Hook.
    :param verify: SSL verification as in S3Hook (False, or a CA bundle path).
    """

    hook_name = "Amazon S3 (multipart upload)"

    def __init__(self, aws_conn_id: str | None = "aws_default", verify: bool | str | None = None, **kwargs: Any):
        super().__init__(aws_conn_id=aws_conn_id, verify=verify, **kwargs)
        self._cancelled = threading.Event()
        self._stoppers: list[Callable[[], None]] = []
        #: Reentrant: ``cancel`` may run in a signal handler on a thread that is registering a stopper.
        self._stoppers_lock = threading.RLock()

    # -- uploads ----------------------------------------------------------------------------------

    def upload_file(
        self,
        file: str | os.PathLike[str],
        key: str,
        bucket: str | None = None,
        *,
        replace: bool = False,
        resume: bool = True,
        part_size: int | None = None,
        adopt_quiet_after: float | timedelta | None = DEFAULT_ADOPT_QUIET_AFTER,
        window_timezone: str | None = None,
        resume_upload_id: str | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Upload ``file`` to ``key`` (or an ``s3://bucket/key`` URL) and return the operator's result dict.

        ``options``: the operator's (``concurrency``, ``max_buffer_bytes``, ``checksum_algorithm``,
        ``progress_interval``, ``encrypt``, ``sse_kms_key_id``, ``storage_class``, ``content_type``,
        ``metadata``, ``tags``, ``acl_policy``, ``extra_args``) and any other ``UploadOptions`` field.
        ``replace=False``: an object already holding exactly the file's bytes is success with nothing
        sent; any other object raises before anything is created. ``resume``: continue an incomplete
        upload of the key found with ListMultipartUploads, once it has been quiet for
        ``adopt_quiet_after`` and its stored parts verify against the file (else it is left alone);
        ``adopt_quiet_after=None`` adopts none. On failure, the upload this call created or adopted is aborted.

        ``upload_window`` ("22:00-06:00"), a ``max_bandwidth`` timetable (``{"08:00": 4 * MiB, "23:00": None}``)
        and ``finish_by`` are read in ``window_timezone`` (default UTC). When the window closes, the call raises
        ``UploadPaused`` (the upload kept; ``resumes_at``, ``upload_id``): call again with
        ``resume_upload_id=paused.upload_id`` in the next window to continue it (stored parts verified first).
        """
        self._raise_if_cancelled()
        bucket, key = object_target(bucket, key)
        quiet_after = validation.adopt_quiet_after(adopt_quiet_after)
        settings = upload_options(replace=replace, **_scheduled(options, window_timezone))
        started = time.monotonic()
        with FileSource(file) as source:
            upload = self.file_upload(
                source, plan_parts(source.size, validation.part_size(part_size)), bucket, key, settings
            )
            if not replace:
                existing = upload.existing_object()
                if existing is not None:
                    return upload.result_for_existing(existing, started).to_dict()
            self._raise_if_cancelled()
            adopting = resume and quiet_after is not None and not resume_upload_id
            found = upload.find_upload_to_adopt(quiet_after) if adopting else None
            return upload.run(resume_upload_id=resume_upload_id, adopt=found).to_dict()

    def upload_stream(
        self,
        stream: Any,
        key: str,
        bucket: str | None = None,
        *,
        replace: bool = False,
        part_size: int | None = None,
        equal_parts: bool = False,
        **options: Any,
    ) -> dict[str, Any]:
        """Upload a readable object (``read(n)``) or an iterable of bytes chunks, as it is read.

        Parts start at ``part_size`` (16 MiB) and double every 1,000 parts unless ``equal_parts``.
        A stream cannot be replayed: nothing is resumed, and any failure aborts the upload.
        ``replace=False`` refuses any existing object (there is nothing to compare it with).
        """
        bucket, key = object_target(bucket, key)
        _refuse_windows_for_streams(options)
        settings = upload_options(replace=replace, **options)
        first_part_size = first_stream_part_size(part_size)
        client = self._ready_for_stream(bucket, key, settings, first_part_size, replace=replace)
        return self.run_stream(as_stream(stream), bucket, key, settings, first_part_size, equal_parts, client)

    def upload_command(
        self,
        command: str,
        key: str,
        bucket: str | None = None,
        *,
        command_timeout: float | timedelta | None = None,
        replace: bool = False,
        part_size: int | None = None,
        equal_parts: bool = False,
        **options: Any,
    ) -> dict[str, Any]:
        """Upload the standard output of a shell command (run with ``bash -o pipefail``) as it is produced.

        Nothing is completed unless the command exits 0; a failure, ``command_timeout`` or ``cancel``
        kills the whole pipeline and aborts the upload.
        """
        bucket, key = object_target(bucket, key)
        _refuse_windows_for_streams(options)
        settings = upload_options(replace=replace, **options)
        first_part_size = first_stream_part_size(part_size)
        find_bash()  # before any request: without bash there is no pipefail, and nothing may be created
        client = self._ready_for_stream(bucket, key, settings, first_part_size, replace=replace)
        with self.command_source(command, timeout=command_timeout) as source:
            return self.run_stream(source, bucket, key, settings, first_part_size, equal_parts, client)

    def object_matches(
        self,
        file: str | os.PathLike[str],
        key: str,
        bucket: str | None = None,
        *,
        extra_args: Mapping[str, Any] | None = None,
        part_size: int | None = None,
    ) -> bool:
        """Whether the object at ``key`` exists and holds exactly ``file``'s bytes (nothing is downloaded:
        its size and its checksum or multipart ETag are recomputed from the file). An object that carries
        nothing comparable (SSE-KMS without checksums, growing stream parts) does not match.
        ``extra_args``: SSE-C key, RequestPayer, ExpectedBucketOwner, repeated on the HeadObject.
        ``part_size``: the part size the object was uploaded with, for a store that cannot tell it
        (no ``HeadObject`` with ``PartNumber``, e.g. Swift); by default the one ``upload_file`` picks."""
        bucket, key = object_target(bucket, key)
        with FileSource(file) as source:
            hint = validation.part_size(part_size)
            try:
                plan: PartPlan | None = plan_parts(source.size, hint)
            except InvalidUploadRequest:  # a part size the file could not be uploaded with: no guess
                plan = None
            comparison = self.compare(self.get_conn(), bucket, key, source, dict(extra_args or {}), plan)
        if comparison is not None and comparison.matches and not comparison.collision_resistant:
            self.log.warning("s3://%s/%s matches %s by %s.", bucket, key, file, comparison.detail)
        return comparison is not None and comparison.matches

    # -- the steps the operators share --------------------------------------------------------------

    def file_upload(
        self,
        source: FileSource,
        plan: PartPlan,
        bucket: str,
        key: str,
        options: UploadOptions,
        *,
        client: Any | None = None,
    ) -> FileUpload:
        """The steps of one file upload (``FileUpload``), on ``client`` or a tuned one for the plan's parts."""
        if client is None:
            client = self.upload_client_for(options, plan.part_size)
        return FileUpload(self, client, bucket=bucket, key=key, source=source, plan=plan, options=options)

    def compare(
        self,
        client: Any,
        bucket: str,
        key: str,
        source: FileSource,
        extra_args: Mapping[str, Any],
        plan: PartPlan | None = None,
    ) -> ObjectComparison | None:
        """The object at the key against ``source`` (stops on ``cancel``); None when HeadObject was
        forbidden and a probe shows the key is free (a role without s3:ListBucket)."""
        try:
            return compare_object(
                client,
                bucket,
                key,
                source,
                extra_args=extra_args,
                part_size_hint=plan.part_size if plan is not None else None,
                cancel=self._cancelled,
            )
        except S3UploadError as e:
            self._explain_forbidden(client, bucket, key, e, extra_args)
            return None

    def check_key_free(self, client: Any, bucket: str, key: str, extra_args: Mapping[str, Any]) -> None:
        """For a stream (nothing to compare with): raise S3UploadError(ObjectExists) if the key holds an object."""
        try:
            head_object(client, bucket, key, extra_args=extra_args)
        except S3UploadError as e:
            if e.code in NOT_FOUND_CODES:
                return
            self._explain_forbidden(client, bucket, key, e, extra_args)
            return
        raise _object_exists_error(bucket, key)

    def _explain_forbidden(
        self, client: Any, bucket: str, key: str, error: S3UploadError, extra_args: Mapping[str, Any]
    ) -> None:
        """Re-raise ``error`` unless it is a 403 that a probe shows means "no object here"."""
        if error.code not in FORBIDDEN_CODES:
            raise error
        explained = explain_forbidden_head(client, bucket, key, error, extra_args)
        if explained is not None:
            raise explained from error

    def stream_engine(
        self,
        stream: Stream,
        bucket: str,
        key: str,
        options: UploadOptions,
        *,
        first_part_size: int,
        growing: bool,
        client: Any,
        on_upload_started: Callable[[str], None] | None = None,
    ) -> StreamUploadEngine:
        """The engine for a stream, on ``client`` (``upload_client_for(options, first_part_size)``); run it
        inside ``cancelling(engine.cancel)`` for ``cancel`` to reach it."""
        return StreamUploadEngine(
            client,
            bucket=bucket,
            key=key,
            stream=stream,
            first_part_size=first_part_size,
            growing=growing,
            options=options,
            log=self.log,
            on_upload_started=on_upload_started,
            abort_client=self.get_abort_client(),
        )

    def _ready_for_stream(
        self, bucket: str, key: str, options: UploadOptions, first_part_size: int, *, replace: bool
    ) -> Any:
        """The client for a stream's parts, once ``replace=False`` found the key free: both before the
        stream is read or the command started, so that a refusal costs nothing."""
        self._raise_if_cancelled()
        client = self.upload_client_for(options, first_part_size)
        if not replace:
            self.check_key_free(client, bucket, key, options.extra_args)
        return client

    def run_stream(
        self,
        stream: Stream,
        bucket: str,
        key: str,
        options: UploadOptions,
        first_part_size: int,
        equal_parts: bool,
        client: Any,
    ) -> dict[str, Any]:
        """Upload ``stream`` (no resume: any failure aborts); ``cancel`` stops it from any thread."""
        engine = self.stream_engine(
            stream, bucket, key, options, first_part_size=first_part_size, growing=not equal_parts, client=client
        )
        with self.cancelling(engine.cancel):
            return engine.run().to_dict()

    @contextlib.contextmanager
    def command_source(self, command: str, *, timeout: float | timedelta | None = None) -> Iterator[CommandSource]:
        """Start ``command`` (see ``CommandSource``); ``cancel`` kills its whole pipeline.

        Log lines name the program only; the whole command is logged at DEBUG, through Airflow's secrets
        masker, after the passwords of URLs in it and the values of its secret-named ``NAME=value``
        words were registered with the masker (so that stderr echoing them is masked too).
        """
        self._raise_if_cancelled()
        redact = mask_command_secrets(command)
        self.log.debug("Command for %s: %s", command_label(command), redact(command))
        with CommandSource(command, timeout=timeout, log=self.log) as source, self.cancelling(source.kill):
            yield source

    def upload_handle(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        *,
        extra_args: Mapping[str, Any] | None = None,
        client: Any | None = None,
    ) -> MultipartUpload:
        """The calls of an existing upload (by its UploadId), on ``client`` or the connection's client."""
        return MultipartUpload(client or self.get_conn(), bucket, key, upload_id=upload_id, extra_args=extra_args)

    def abort_upload(self, upload: MultipartUpload, *, quick: bool = False) -> None:
        """Abort ``upload`` and make sure it is gone (MultipartUploadError if it could not be).

        ``quick``: through the abort client (its own pool, short timeouts): for a thread started by a
        kill, while the upload's own client may be busy on another thread.
        """
        if quick:
            upload = self.upload_handle(
                upload.bucket,
                upload.key,
                upload.upload_id or "",
                extra_args=upload.extra_args,
                client=self.get_abort_client(),
            )
        upload.abort()

    # -- clients ----------------------------------------------------------------------------------

    def get_upload_client(
        self, *, workers: int = DEFAULT_CONCURRENCY, checksum_algorithm: str | None = DEFAULT_CHECKSUM_ALGORITHM
    ) -> Any:
        """A client for ``workers`` parallel parts: its own pool, standard retries, TCP keep-alive.

        These defaults sit *under* the connection's ``config_kwargs``, which win; only a pool too small
        for the workers is raised, since parts waiting for a connection would stall the upload.
        ``checksum_algorithm=None`` (stores that reject S3 checksums) also turns off the checksums
        botocore >= 1.36 adds by default.
        """
        config = Config(
            max_pool_connections=workers + 4,
            retries={"mode": "standard", "max_attempts": UPLOAD_RETRIES},
            tcp_keepalive=True,
        ).merge(self.config)
        if (config.max_pool_connections or 10) < workers + 1:
            config = config.merge(Config(max_pool_connections=workers + 4))
        if checksum_algorithm is None:
            config = config.merge(
                Config(request_checksum_calculation="when_required", response_checksum_validation="when_required")
            )
        return self.get_client_type(config=config)

    def upload_client_for(self, options: UploadOptions, part_size: int) -> Any:
        """The upload client sized for the parts of ``part_size`` that ``options`` lets fly at once."""
        return self.get_upload_client(
            # a file's parts may be more than workers_for's (read on demand; adaptive up to max_concurrency)
            workers=max(options.workers_for(part_size), options.file_workers_for(part_size)),
            checksum_algorithm=options.checksum_algorithm,
        )

    def get_abort_client(self) -> Any:
        """A second client from the same connection, for the abort a cancel starts in a thread.

        Its own connection pool means it never waits on the connections the parts hold (a signal
        handler must not block on them), and it gives up quickly: the upload aborts again through
        the main client once its parts have stopped.
        """
        quick = Config(
            connect_timeout=ABORT_TIMEOUT,
            read_timeout=ABORT_TIMEOUT,
            retries={"mode": "standard", "total_max_attempts": 2},
        )
        return self.get_client_type(config=self.config.merge(quick))

    # -- cancellation -----------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop what this hook is running, from any thread (a signal handler, a callback).

        A running upload stops sending (mid-part), aborts what it created, and raises
        UploadCancelledError; a command's pipeline is killed; a sweep stops before its next upload.
        Cancelling is final: the hook refuses later work too (a cancel that lands between two steps
        of a task must stop the next one). No network I/O here: the aborts run in the uploads' threads.
        """
        self._cancelled.set()
        with self._stoppers_lock:
            stoppers = list(self._stoppers)
        for stop in stoppers:
            stop()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @contextlib.contextmanager
    def cancelling(self, stop: Callable[[], None]) -> Iterator[None]:
        """Make ``cancel`` call ``stop`` while the block runs (at once if it was already cancelled)."""
        with self._stoppers_lock:
            self._stoppers.append(stop)
        try:
            if self._cancelled.is_set():
                stop()
            yield
        finally:
            with self._stoppers_lock:
                self._stoppers.remove(stop)

    def _raise_if_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise UploadCancelledError("the upload was cancelled before it started")

    # -- housekeeping -----------------------------------------------------------------------------

    def abort_stale_uploads(
        self,
        bucket: str | None,
        prefix: str = "",
        older_than: timedelta | float = DEFAULT_OLDER_THAN,
        *,
        dry_run: bool = False,
        request_args: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Abort the incomplete multipart uploads under ``prefix`` initiated more than ``older_than`` ago.

        ``prefix`` is a key prefix in ``bucket``, or an ``s3://bucket/prefix`` URL (``bucket`` then None
        or the same bucket); ``older_than`` a ``timedelta`` or seconds, never negative. Both are checked
        before any request (ValueError/InvalidUploadRequest), as the operator checks them.
        Returns the report (count, bytes their parts held, the oldest age, each upload); raises
        ``StaleUploadCleanupError`` at the end if some could not be aborted (the others were).
        ``request_args``: ``RequestPayer``/``ExpectedBucketOwner``, sent with every call.
        """
        bucket, prefix = bucket_and_path(bucket, prefix, "prefix")
        older_than = validation.duration("older_than", older_than)
        sweep = StaleUploadSweep(
            self.get_conn(),
            bucket,
            prefix,
            older_than=older_than,
            dry_run=dry_run,
            request_args=request_args,
            log=self.log,
        )
        with self.cancelling(sweep.cancel):
            return sweep.run()
