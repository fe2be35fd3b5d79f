"""PartRecord: what S3 needs to complete an upload, and nothing of ours, whatever the record holds."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from airflow_mpu_provider.multipart.checksums.digests import multipart_etag
from airflow_mpu_provider.multipart.file_engine import FileUploadEngine
from airflow_mpu_provider.multipart.options import UploadOptions
from airflow_mpu_provider.multipart.parts.plan import plan_parts
from airflow_mpu_provider.multipart.parts.record import PartRecord
from airflow_mpu_provider.multipart.sources.file import FileSource
from airflow_mpu_provider.multipart.units import MiB
from airflow_mpu_provider.multipart.upload import MultipartUpload
from tests.conftest import incomplete_uploads, make_file, send_part
from tests.support.local_airflow import store_echoes_no_checksums

BUCKET = "test-bucket"
MD5 = hashlib.md5(b"part").digest()
ETAG = f'"{MD5.hex()}"'


def test_the_completion_entry_names_number_etag_and_checksum_only():
    record = PartRecord(3, 5 * MiB, ETAG, "AAAAAA==", "CRC32C", MD5)
    assert record.completion_entry() == {"PartNumber": 3, "ETag": ETAG, "ChecksumCRC32C": "AAAAAA=="}
    assert record.checksum_field == "ChecksumCRC32C"


@pytest.mark.parametrize(
    ("checksum", "algorithm"),
    [(None, "CRC32C"), ("", "SHA256"), ("AAAAAA==", None)],  # no value, or no algorithm to name it by
)
def test_a_checksum_is_named_only_with_both_its_value_and_its_algorithm(checksum, algorithm):
    record = PartRecord(1, 10, ETAG, checksum, algorithm)
    assert record.completion_entry() == {"PartNumber": 1, "ETag": ETAG}
    assert record.checksum_field is None
    if algorithm is None:
        assert record.checksum is None  # never half a fact: a checksum S3 could not be told the name of


def test_a_record_cannot_be_changed_behind_its_holders_back():
    record = PartRecord(1, 10, ETAG, md5=MD5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.md5 = None  # type: ignore[misc]
    assert record.completion_entry() is not record.completion_entry()  # a fresh dict each time


def test_from_listing_reads_the_algorithms_checksum_and_the_md5_only_where_etags_are_md5s():
    listed = {"PartNumber": 2, "Size": 7, "ETag": ETAG, "ChecksumSHA256": "c2hh", "ChecksumCRC32C": "Y3Jj"}
    plain = PartRecord.from_listing(listed, "SHA256", etag_is_md5=True)
    assert (plain.number, plain.size, plain.etag, plain.checksum, plain.md5) == (2, 7, ETAG, "c2hh", MD5)
    encrypted = PartRecord.from_listing(listed, "SHA256", etag_is_md5=False)  # SSE-KMS: the ETag is no MD5
    assert encrypted.md5 is None and encrypted.checksum == "c2hh"
    no_checksums = PartRecord.from_listing(listed, None, etag_is_md5=True)
    assert no_checksums.checksum is None and no_checksums.completion_entry() == {"PartNumber": 2, "ETag": ETAG}


def test_from_listing_of_an_opaque_etag_has_no_md5():
    listed = {"PartNumber": 1, "Size": 7, "ETag": '"not-an-md5-1"'}
    assert PartRecord.from_listing(listed, "CRC32C", etag_is_md5=True).md5 is None


@pytest.mark.parametrize("checksum", ["CRC32C", None])
def test_put_part_returns_the_parts_record(mock_s3, checksum):
    upload = MultipartUpload(mock_s3, BUCKET, "seq", checksum_algorithm=checksum)
    upload.create()
    records = [send_part(upload, 1, b"a" * (5 * MiB)), send_part(upload, 2, b"tail")]
    upload.complete(records)
    assert [(p.number, p.size) for p in records] == [(1, 5 * MiB), (2, 4)]
    assert all(p.etag for p in records)
    assert all(bool(p.checksum) is (checksum is not None) for p in records)
    if checksum is None:  # each part then carries Content-MD5, and its record keeps that MD5
        assert [p.md5 for p in records] == [hashlib.md5(b"a" * (5 * MiB)).digest(), hashlib.md5(b"tail").digest()]
    head = mock_s3.head_object(Bucket=BUCKET, Key="seq")
    if checksum is None:  # the records' MD5s predict the object's ETag
        assert head["ETag"] == multipart_etag(p.md5 for p in records)  # type: ignore[misc]


def test_complete_leaves_the_callers_records_as_they_were(mock_s3, tmp_path):
    """The engine used to pop its private ``_md5`` key out of the entries it was handed."""
    store_echoes_no_checksums(mock_s3)  # every part keeps an MD5, so the ETag can be predicted
    path = make_file(tmp_path / "f", 11 * MiB)
    with FileSource(path) as source:
        engine = FileUploadEngine(
            mock_s3,
            bucket=BUCKET,
            key="obj",
            source=source,
            plan=plan_parts(source.size, 5 * MiB),
            options=UploadOptions(progress_interval=0),
        )
        engine._resume_or_create(None, None, None)
        parts = [engine._put(p.number, source.read(p.offset, p.length)) for p in engine.plan]
    given = list(parts)
    response = engine._complete(given, 11 * MiB)
    assert given == parts and all(p.md5 is not None for p in given)  # nothing taken out, nothing reordered
    assert response["ETag"] == multipart_etag(p.md5 for p in parts)  # type: ignore[misc]
    assert incomplete_uploads(mock_s3, BUCKET) == []


def test_complete_sends_the_parts_in_number_order_whatever_order_it_is_given(mock_s3):
    upload = MultipartUpload(mock_s3, BUCKET, "ordered", checksum_algorithm=None)
    upload.create()
    chunks = (b"a" * (5 * MiB), b"b" * (5 * MiB), b"c")
    records = [send_part(upload, number, chunk) for number, chunk in enumerate(chunks, 1)]
    upload.complete(list(reversed(records)))
    body = mock_s3.get_object(Bucket=BUCKET, Key="ordered")["Body"].read()
    assert body == b"a" * (5 * MiB) + b"b" * (5 * MiB) + b"c"
