"""How to upload: ``UploadOptions``, and the one list of object arguments callers may give by name.

Callers build options in one place, ``UploadOptions.from_arguments(replace=..., **kwargs)``: the front
door, ``S3MultipartHook`` and ``MultipartUploadOperator`` pass what their users gave, and get the same
checks and the same CreateMultipartUpload arguments from the friendly names (``object_arguments``).
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from airflow_mpu_provider.multipart import validation
from airflow_mpu_provider.multipart.checksums.digests import DEFAULT_CHECKSUM_ALGORITHM, normalize_checksum_algorithm
from airflow_mpu_provider.multipart.checksums.whole_file import resolve_checksum_type
from airflow_mpu_provider.multipart.parallelism import DEFAULT_MAX_CONCURRENCY
from airflow_mpu_provider.multipart.progress import DEFAULT_PROGRESS_INTERVAL
from airflow_mpu_provider.multipart.sources.file_range import range_footprint
from airflow_mpu_provider.multipart.units import GiB
from airflow_mpu_provider.multipart.upload import OBJECT_ARGS
from airflow_mpu_provider.multipart.windows import (
    BandwidthTimetable,
    UploadWindow,
    bandwidth_setting,
    deadline_at,
    finish_by_setting,
    resolve_timezone,
)

#: Parts sent at once; chosen from benchmarks/bench_upload.py.
DEFAULT_CONCURRENCY = 8
#: Upper bound on part bytes held in memory at once (workers are reduced for very large parts).
DEFAULT_MAX_BUFFER_BYTES = 1 * GiB

#: The friendly arguments that become CreateMultipartUpload arguments (``object_arguments``).
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


@dataclass(frozen=True)
class UploadOptions:
    """How to upload; every field has a default that works up to S3's largest object."""

    #: Parts in flight: a fixed number, or None (the default) to adapt it while the upload runs: a file
    #: starts at 8 and grows while part latency stays flat (parallelism.py); a stream keeps 8.
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

    @classmethod
    def from_arguments(cls, *, replace: bool, window_timezone: Any = None, **arguments: Any) -> UploadOptions:
        """The options from what a caller was given by name: the one place callers build them.

        ``arguments``: any field of this class (checked where a check exists, the others forwarded as
        given, so that fields added later work at once) and the friendly object arguments
        (``OBJECT_ARGUMENT_NAMES``, which become ``extra_args``). ``replace`` becomes ``overwrite``
        (False completes only if the key is still free). ``upload_window``, a ``max_bandwidth``
        timetable and ``finish_by`` are read in ``window_timezone`` (None: UTC) unless already parsed.
        Everything is refused here (TypeError, ValueError), before any request.
        """
        fields = {f.name for f in dataclasses.fields(cls)} - {"overwrite", "extra_args"}
        unknown = set(arguments) - fields - set(OBJECT_ARGUMENT_NAMES)
        if unknown:
            raise TypeError(
                f"unknown upload options {sorted(unknown)}; allowed: {sorted(fields | set(OBJECT_ARGUMENT_NAMES))} "
                "(and replace, resume, part_size, adopt_quiet_after)"
            )
        scheduled = _scheduled(arguments, window_timezone)
        chosen = {name: _OPTION_CHECKS.get(name, _as_is)(value) for name, value in scheduled.items() if name in fields}
        extra = object_arguments(**{name: value for name, value in arguments.items() if name in OBJECT_ARGUMENT_NAMES})
        options = cls(**chosen, extra_args=extra, overwrite=replace)
        resolve_checksum_type(options.checksum_type, options.checksum_algorithm)  # refused before any request
        return options


#: Checks of the UploadOptions fields callers pass by name; any other field is forwarded as given.
_OPTION_CHECKS: dict[str, Callable[[Any], Any]] = {
    "concurrency": lambda value: None if value is None else validation.concurrency(value),
    "max_concurrency": validation.concurrency,
    "max_buffer_bytes": validation.max_buffer_bytes,
    "max_bandwidth": bandwidth_setting,
    "checksum_algorithm": normalize_checksum_algorithm,
    "progress_interval": lambda value: validation.seconds("progress_interval", value),
}


def _as_is(value: Any) -> Any:
    return value


def _scheduled(arguments: Mapping[str, Any], window_timezone: Any) -> dict[str, Any]:
    """``arguments`` with ``upload_window``, a ``max_bandwidth`` timetable and ``finish_by`` in ``window_timezone``."""
    tz = resolve_timezone(window_timezone)
    scheduled = dict(arguments)
    if scheduled.get("upload_window") is not None:
        scheduled["upload_window"] = UploadWindow.parse(scheduled["upload_window"], tz)
    if isinstance(scheduled.get("max_bandwidth"), Mapping):
        scheduled["max_bandwidth"] = BandwidthTimetable.parse(scheduled["max_bandwidth"], tz)
    if scheduled.get("finish_by") is not None:
        scheduled["finish_by"] = deadline_at(finish_by_setting(scheduled["finish_by"]), tz, datetime.now(UTC))
    return scheduled


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
    """CreateMultipartUpload arguments from the friendly arguments (``extra_args`` wins)."""
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
