"""How to upload: ``UploadOptions``, and the one list of object arguments callers may give by name.

Callers build options in one place, ``UploadOptions.from_arguments(replace=..., **kwargs)``: the front
door, ``S3MultipartHook`` and ``MultipartUploadOperator`` pass what their users gave, and get the same
checks and the same CreateMultipartUpload arguments from the friendly names (``object_arguments``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_mpu_provider.multipart.checksums.digests import DEFAULT_CHECKSUM_ALGORITHM
from airflow_mpu_provider.multipart.parallelism import DEFAULT_MAX_CONCURRENCY
from airflow_mpu_provider.multipart.progress import DEFAULT_PROGRESS_INTERVAL
from airflow_mpu_provider.multipart.sources.file_range import range_footprint
from airflow_mpu_provider.multipart.units import GiB

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
    #: starts at 8 and adds parts while the aggregate rate rises (parallelism.py); a stream keeps 8.
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
