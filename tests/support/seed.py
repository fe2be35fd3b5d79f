"""Incomplete uploads as a crashed uploader leaves them, for tests of what a later run does with them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from airflow_mpu_provider.multipart.checksums.digests import digest_part
from airflow_mpu_provider.multipart.units import MiB
from airflow_mpu_provider.multipart.upload import MultipartUpload


def seed_crashed_upload(
    client: Any,
    bucket: str,
    key: str,
    data: bytes,
    parts: Iterable[int] = (1,),
    *,
    part_size: int = 5 * MiB,
    checksum_type: str | None = "FULL_OBJECT",
    algorithm: str = "CRC32C",
) -> str:
    """Create an upload of ``key`` holding ``parts`` of ``data`` (cut in ``part_size`` pieces, CRC32C and MD5
    as the engine sends them), and leave it incomplete; returns its UploadId. The caller cleans it up.
    ``checksum_type``: as the engine's default creates it (FULL_OBJECT); None for an upload of an older
    version (no ChecksumType: COMPOSITE)."""
    upload = MultipartUpload(client, bucket, key, checksum_algorithm=algorithm, checksum_type=checksum_type)
    upload.create()
    for number in parts:
        chunk = data[(number - 1) * part_size : number * part_size]
        upload.put_part(number, chunk, digest_part(number, chunk, algorithm=algorithm, with_md5=True))
    assert upload.upload_id is not None
    return upload.upload_id
