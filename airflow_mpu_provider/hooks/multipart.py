"""S3MultipartHook: the amazon provider's S3Hook, plus what large multipart uploads need.

Built on ``S3Hook`` so that every connection extra users know (credentials, ``role_arn``,
``region_name``, ``endpoint_url``, ``config_kwargs``, ``verify``) keeps working, and usable wherever a
hook is: operators, ``@task`` functions, callbacks, scripts. It is the one place that builds the
clients the engine needs, tuned for many parallel parts (no method takes a client: the hook owns
them), and it runs the engine's sequences (``multipart/file_upload.py``, ``multipart/stream_upload.py``)
for the operators: the ``replace=False`` check, finding an upload to adopt, recording, aborting.

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
import os
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from botocore.config import Config

from airflow_mpu_provider.multipart import validation
from airflow_mpu_provider.multipart.cancellation import CancelScope
from airflow_mpu_provider.multipart.checksums.digests import DEFAULT_CHECKSUM_ALGORITHM
from airflow_mpu_provider.multipart.errors import InvalidUploadRequest
from airflow_mpu_provider.multipart.existing import compare_with_object
from airflow_mpu_provider.multipart.file_upload import FileUploadSequence, RetryPlan
from airflow_mpu_provider.multipart.ledger import UploadLedger
from airflow_mpu_provider.multipart.options import DEFAULT_CONCURRENCY, UploadOptions
from airflow_mpu_provider.multipart.parts.plan import PartPlan, plan_parts
from airflow_mpu_provider.multipart.resume import DEFAULT_ADOPT_QUIET_AFTER
from airflow_mpu_provider.multipart.s3_target import bucket_and_path, object_target
from airflow_mpu_provider.multipart.sources.command import CommandSource, command_label, find_bash, inline_values
from airflow_mpu_provider.multipart.sources.file import FileSource
from airflow_mpu_provider.multipart.sources.stream import as_stream
from airflow_mpu_provider.multipart.stale import DEFAULT_OLDER_THAN, StaleUploadSweep
from airflow_mpu_provider.multipart.stream_upload import StreamUploadSequence, first_stream_part_size
from airflow_mpu_provider.multipart.upload import MultipartUpload
from airflow_mpu_provider.version_compat import secrets_masker

#: Seconds the abort started by a cancel waits on the network: it races a kill's grace period, and the
#: upload's own thread aborts again through the main client once its parts have stopped.
ABORT_TIMEOUT = 5
#: Retries per request in the main client (botocore's ``max_attempts``: 11 attempts in all): a long upload
#: must ride out a flaky network; standard mode backs off exponentially and spends a shared retry quota,
#: so a dead endpoint still fails in minutes.
UPLOAD_RETRIES = 10


def _refuse_windows_for_streams(options: Mapping[str, Any]) -> None:
    if options.get("upload_window") is not None or options.get("finish_by") is not None:
        raise InvalidUploadRequest(
            "upload_window and finish_by work for files only: a stream cannot pause and resume, and its size is "
            "unknown. Upload a file (upload_file) to use them."
        )


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
        #: What ``cancel`` stops: the sequences check it between their steps and register their engines.
        self._cancel = CancelScope()

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
        ledger: UploadLedger | None = None,
        retry: RetryPlan | None = None,
        on_upload_started: Callable[[str], None] | None = None,
        on_aborted: Callable[[], None] | None = None,
        clock: Callable[[], datetime] | None = None,
        on_deadline: Callable[[bool, datetime | None], None] | None = None,
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

        For a caller that tries again (the operator): ``ledger`` (``UploadLedger``) is where the upload is
        recorded the moment it exists and taken over from by the next call; ``retry`` (``RetryPlan``) says a
        next try will come, so that a failure keeps the upload where that try will look for it;
        ``on_upload_started(upload_id)`` and ``on_aborted()`` are told; ``clock``/``on_deadline`` are the
        upload schedule's. See ``multipart.file_upload.FileUploadSequence``.
        """
        bucket, key = object_target(bucket, key)
        settings = UploadOptions.from_arguments(replace=replace, window_timezone=window_timezone, **options)
        sequence = FileUploadSequence(
            None,
            file,
            bucket,
            key,
            client_for=lambda part_size: self.upload_client_for(settings, part_size),
            options=settings,
            part_size=validation.part_size_setting(part_size),
            resume=resume,
            adopt_quiet_after=validation.adopt_quiet_after(adopt_quiet_after),
            resume_upload_id=resume_upload_id,
            ledger=ledger,
            retry=retry,
            on_upload_started=on_upload_started,
            on_aborted=on_aborted,
            cancel=self._cancel,
            abort_client=self.get_abort_client(),
            clock=clock,
            on_deadline=on_deadline,
            log=self.log,
        )
        return sequence.run().to_dict()

    def upload_stream(
        self,
        stream: Any,
        key: str,
        bucket: str | None = None,
        *,
        replace: bool = False,
        part_size: int | None = None,
        equal_parts: bool = False,
        ledger: UploadLedger | None = None,
        on_upload_started: Callable[[str], None] | None = None,
        on_aborted: Callable[[], None] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Upload a readable object (``read(n)``) or an iterable of bytes chunks, as it is read.

        Parts start at ``part_size`` (16 MiB) and double every 1,000 parts unless ``equal_parts``.
        A stream cannot be replayed: nothing is resumed, and any failure aborts the upload.
        ``replace=False`` refuses any existing object (there is nothing to compare it with).
        """
        bucket, key = object_target(bucket, key)
        _refuse_windows_for_streams(options)
        settings = UploadOptions.from_arguments(replace=replace, **options)
        sequence = self._stream_sequence(
            bucket, key, settings, first_stream_part_size(part_size), equal_parts, ledger, on_upload_started, on_aborted
        )
        sequence.prepare()
        return sequence.run(as_stream(stream)).to_dict()

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
        ledger: UploadLedger | None = None,
        on_upload_started: Callable[[str], None] | None = None,
        on_aborted: Callable[[], None] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Upload the standard output of a shell command (run with ``bash -o pipefail``) as it is produced.

        Nothing is completed unless the command exits 0; a failure, ``command_timeout`` or ``cancel``
        kills the whole pipeline and aborts the upload. ``ledger``: where the UploadId is recorded while the
        upload runs, so that the next call aborts the upload of one that died (a stream is never resumed).
        """
        bucket, key = object_target(bucket, key)
        _refuse_windows_for_streams(options)
        settings = UploadOptions.from_arguments(replace=replace, **options)
        first_part_size = first_stream_part_size(part_size)
        find_bash()  # before any request: without bash there is no pipefail, and nothing may be created
        sequence = self._stream_sequence(
            bucket, key, settings, first_part_size, equal_parts, ledger, on_upload_started, on_aborted
        )
        sequence.prepare()
        with self.command_source(command, timeout=command_timeout) as source:
            return sequence.run(source).to_dict()

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
            hint = validation.part_size_setting(part_size)
            try:
                plan: PartPlan | None = plan_parts(source.size, hint)
            except InvalidUploadRequest:  # a part size the file could not be uploaded with: no guess
                plan = None
            comparison = compare_with_object(
                self.get_conn(),
                bucket,
                key,
                source,
                dict(extra_args or {}),
                part_size_hint=plan.part_size if plan is not None else None,
                cancel=self._cancel.event,
            )
        if comparison is not None and comparison.matches and not comparison.collision_resistant:
            self.log.warning("s3://%s/%s matches %s by %s.", bucket, key, file, comparison.detail)
        return comparison is not None and comparison.matches

    def _stream_sequence(
        self,
        bucket: str,
        key: str,
        options: UploadOptions,
        first_part_size: int,
        equal_parts: bool,
        ledger: UploadLedger | None,
        on_upload_started: Callable[[str], None] | None,
        on_aborted: Callable[[], None] | None,
    ) -> StreamUploadSequence:
        return StreamUploadSequence(
            self.upload_client_for(options, first_part_size),
            bucket,
            key,
            options=options,
            first_part_size=first_part_size,
            growing=not equal_parts,
            ledger=ledger,
            on_upload_started=on_upload_started,
            on_aborted=on_aborted,
            cancel=self._cancel,
            abort_client=self.get_abort_client(),
            log=self.log,
        )

    @contextlib.contextmanager
    def command_source(self, command: str, *, timeout: float | timedelta | None = None) -> Iterator[CommandSource]:
        """Start ``command`` (see ``CommandSource``); ``cancel`` kills its whole pipeline.

        Log lines name the program only; the whole command is logged at DEBUG, through Airflow's secrets
        masker, after the passwords of URLs in it and the values of its secret-named ``NAME=value``
        words were registered with the masker (so that stderr echoing them is masked too).
        """
        self._cancel.raise_if_cancelled()
        redact = mask_command_secrets(command)
        self.log.debug("Command for %s: %s", command_label(command), redact(command))
        with CommandSource(command, timeout=timeout, log=self.log) as source, self.cancelling(source.kill):
            yield source

    def upload_handle(
        self, bucket: str, key: str, upload_id: str, *, extra_args: Mapping[str, Any] | None = None
    ) -> MultipartUpload:
        """The calls of an existing upload (by its UploadId), on the connection's client."""
        return MultipartUpload(self.get_conn(), bucket, key, upload_id=upload_id, extra_args=extra_args)

    def abort_upload(self, upload: MultipartUpload, *, quick: bool = False) -> None:
        """Abort ``upload`` and make sure it is gone (MultipartUploadError if it could not be).

        ``quick``: through the abort client (its own pool, short timeouts): for a thread started by a
        kill, while the upload's own client may be busy on another thread.
        """
        (upload.through(self.get_abort_client()) if quick else upload).abort()

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

    def cancel(self) -> bool:
        """Stop what this hook is running, from any thread (a signal handler, a callback); returns whether
        something was running (an upload, a command, a sweep).

        A running upload stops sending (mid-part), aborts what it created, and raises
        UploadCancelledError; a command's pipeline is killed; a sweep stops before its next upload.
        Cancelling is final: the hook refuses later work too (a cancel that lands between two steps
        of a task must stop the next one). No network I/O here: the aborts run in the uploads' threads.
        """
        return self._cancel.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancel.cancelled

    def cancelling(self, stop: Callable[[], None]) -> contextlib.AbstractContextManager[None]:
        """Make ``cancel`` call ``stop`` while the block runs (at once if it was already cancelled)."""
        return self._cancel.cancelling(stop)

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
