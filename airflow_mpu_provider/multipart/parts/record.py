"""What is known about one part S3 holds: the typed record the engine passes around.

A part is sent (UploadPart) or found (ListParts), then named in CompleteMultipartUpload, and its
MD5, when known, lets the engine predict the object's ETag. Keeping those facts in one immutable
record, instead of the dict S3 wants with our own keys added to it, means nothing has to be taken
out of the dict before it is handed to S3, and no caller's list is changed behind its back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_mpu_provider.multipart.checksums.digests import checksum_field, md5_from_etag


@dataclass(frozen=True, slots=True)
class PartRecord:
    """One part of an upload as S3 holds it: number, size, ETag, and the hashes that prove its bytes.

    ``checksum`` is the base64 S3 checksum of ``checksum_algorithm`` (both None for uploads without
    S3 checksums); ``md5`` is the part's raw MD5, None when neither we computed it nor the store's
    ETag is one (SSE-KMS, SSE-C, or parts sent without Content-MD5).
    """

    number: int
    size: int
    etag: str | None
    checksum: str | None = None
    checksum_algorithm: str | None = None
    md5: bytes | None = None

    def __post_init__(self) -> None:
        if not self.checksum_algorithm:  # a checksum without its algorithm could not be named to S3
            object.__setattr__(self, "checksum", None)

    @classmethod
    def from_listing(
        cls, listed: Mapping[str, Any], checksum_algorithm: str | None, *, etag_is_md5: bool
    ) -> PartRecord:
        """A part as ListParts reports it; its MD5 is read from the ETag only where ETags are MD5s."""
        etag = listed.get("ETag")
        return cls(
            number=listed["PartNumber"],
            size=listed["Size"],
            etag=etag,
            checksum=listed.get(checksum_field(checksum_algorithm)) if checksum_algorithm else None,
            checksum_algorithm=checksum_algorithm,
            md5=md5_from_etag(etag) if etag_is_md5 else None,
        )

    @property
    def checksum_field(self) -> str | None:
        """The S3 field the checksum travels in (e.g. ``ChecksumCRC32C``), or None without one."""
        return checksum_field(self.checksum_algorithm) if self.checksum and self.checksum_algorithm else None

    def completion_entry(self, *, with_checksum: bool = True) -> dict[str, Any]:
        """The entry CompleteMultipartUpload's ``MultipartUpload.Parts`` takes for this part (PartNumber and
        ETag, and its checksum unless ``with_checksum=False``: for stores whose schema allows no more)."""
        entry: dict[str, Any] = {"PartNumber": self.number, "ETag": self.etag}
        if with_checksum and self.checksum_field:
            entry[self.checksum_field] = self.checksum
        return entry
