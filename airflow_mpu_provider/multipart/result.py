"""What an upload did: ``UploadResult`` (the operator's return value, through ``to_dict``)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from airflow_mpu_provider.multipart.checksums.compare import ObjectComparison
from airflow_mpu_provider.multipart.checksums.digests import checksum_field
from airflow_mpu_provider.multipart.checksums.whole_file import reported_checksum
from airflow_mpu_provider.multipart.parts.plan import PartPlan


@dataclass
class UploadResult:
    """What was uploaded; JSON-able through ``to_dict`` (it becomes the task's return value)."""

    bucket: str
    key: str
    upload_id: str
    etag: str
    size: int
    part_size: int
    parts: int
    parts_sent: int
    parts_resumed: int
    bytes_sent: int
    bytes_resumed: int
    seconds: float
    checksum: str | None = None
    checksum_algorithm: str | None = None
    version_id: str | None = None
    #: "FULL_OBJECT" (``checksum`` is the CRC of the whole file) or "COMPOSITE" (``value-N``).
    checksum_type: str | None = None
    #: The most part bytes this run held in memory at once (<= max_buffer_bytes, or one part if larger).
    peak_buffer_bytes: int = 0
    #: What rests on a CRC alone (no MD5 or SHA digest to prove it), e.g. "the existing object"; None: nothing.
    crc_only: str | None = None
    #: Parts in flight at the end of the run: what adaptive parallelism settled on (or the fixed count).
    concurrency_settled: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def result_for_existing_object(
    comparison: ObjectComparison,
    *,
    bucket: str,
    key: str,
    plan: PartPlan,
    checksum_algorithm: str | None,
    started: float,
    upload_id: str = "",
) -> UploadResult:
    """The result of a try that found its work already done: the object holds exactly the file."""
    head = comparison.head
    return UploadResult(
        bucket=bucket,
        key=key,
        upload_id=upload_id,
        etag=str(head.get("ETag", "")).strip('"'),
        size=plan.size,
        part_size=plan.part_size,
        parts=plan.count,
        parts_sent=0,
        parts_resumed=0,
        bytes_sent=0,
        bytes_resumed=0,
        seconds=round(time.monotonic() - started, 3),
        checksum=head.get(checksum_field(checksum_algorithm)) if checksum_algorithm else None,
        checksum_algorithm=checksum_algorithm,
        version_id=head.get("VersionId"),
        checksum_type=reported_checksum(head, checksum_algorithm)[1] if checksum_algorithm else None,
        crc_only=None if comparison.collision_resistant else f"the existing object ({comparison.detail})",
    )
