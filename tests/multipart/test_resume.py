"""resume.py: a found upload is adopted only when verifiably quiet and fitting (else left alone), and a
stored part is kept only when it verifiably holds the local bytes of its range."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import boto3
import pytest
from botocore.exceptions import ClientError

from airflow_mpu_provider.multipart.checksums.digests import digest_part
from airflow_mpu_provider.multipart.errors import S3UploadError
from airflow_mpu_provider.multipart.parts.plan import plan_parts
from airflow_mpu_provider.multipart.resume import (
    LISTING_UNAVAILABLE_CODES,
    check_plan_fits,
    crc_only,
    find_adoptable_upload,
    find_adoptable_uploads,
    object_args_fingerprint,
    review_stored_part,
)
from airflow_mpu_provider.multipart.units import MiB
from airflow_mpu_provider.multipart.upload import MultipartUpload
from tests.support.crc_forge import forge_same_crc
from tests.support.seed import seed_crashed_upload

BUCKET = "test-bucket"
LATER = timedelta(minutes=20)


def leftover(client, key: str, parts: int = 1) -> str:
    data = b"".join(bytes([number]) * (5 * MiB) for number in range(1, parts + 1))
    return seed_crashed_upload(client, BUCKET, key, data, range(1, parts + 1))


def find(client, key: str, size: int, *, after: timedelta = timedelta(0), **kwargs):
    return find_adoptable_upload(
        client, BUCKET, key, plan_parts(size, 5 * MiB), "CRC32C", now=lambda: datetime.now(UTC) + after, **kwargs
    )


def test_a_young_upload_is_left_alone_and_an_old_quiet_one_adopted(mock_s3, caplog):
    upload_id = leftover(mock_s3, "k", parts=2)
    with caplog.at_level(logging.WARNING):
        assert find(mock_s3, "k", 12 * MiB) is None  # just initiated: it may be another run's, live
    assert "may be live" in caplog.text and "S3AbortStaleUploadsOperator" in caplog.text
    found = find(mock_s3, "k", 12 * MiB, after=LATER)
    assert found is not None and found.upload_id == upload_id and len(found.parts) == 2
    assert find(mock_s3, "k", 12 * MiB, after=LATER, quiet_after=timedelta(hours=1)) is None
    MultipartUpload(mock_s3, BUCKET, "k", upload_id=upload_id).abort()


def test_an_upload_that_does_not_fit_the_plan_is_left_alone(mock_s3, caplog):
    upload_id = leftover(mock_s3, "k", parts=2)
    with caplog.at_level(logging.WARNING):
        assert find(mock_s3, "k", 7 * MiB, after=LATER) is None  # a 7 MiB file has no part 2 of 5 MiB
    assert "does not fit this file" in caplog.text
    assert [u["UploadId"] for u in mock_s3.list_multipart_uploads(Bucket=BUCKET)["Uploads"]] == [upload_id]
    MultipartUpload(mock_s3, BUCKET, "k", upload_id=upload_id).abort()


def test_only_the_exact_key_counts(mock_s3):
    upload_id = leftover(mock_s3, "k/longer")
    assert find(mock_s3, "k", 6 * MiB, after=LATER) is None
    MultipartUpload(mock_s3, BUCKET, "k/longer", upload_id=upload_id).abort()


class _Store:
    """An upload initiated long ago whose last part was written a minute ago: a slow, live upload."""

    def __init__(self, error: str | None = None) -> None:
        self.error = error
        self.now = datetime.now(UTC)
        self.meta = SimpleNamespace(
            events=SimpleNamespace(register=lambda *a, **k: None, register_first=lambda *a, **k: None)
        )

    def list_multipart_uploads(self, **kwargs):
        if self.error:
            raise ClientError({"Error": {"Code": self.error, "Message": "no"}}, "ListMultipartUploads")
        return {"Uploads": [{"Key": "k", "UploadId": "u1", "Initiated": self.now - timedelta(hours=3)}]}

    def list_parts(self, **kwargs):
        part = {"PartNumber": 1, "Size": 5 * MiB, "ETag": '"x"', "LastModified": self.now - timedelta(minutes=1)}
        return {"Parts": [part]}


def test_a_recent_part_makes_an_old_upload_live(caplog):
    with caplog.at_level(logging.WARNING):
        assert find(_Store(), "k", 6 * MiB) is None
    assert "a part was written" in caplog.text


@pytest.mark.parametrize("code", ["AccessDenied", "NotImplemented", "MethodNotAllowed", "501"])
def test_listing_unavailable_is_raised_for_the_caller_to_degrade(code):
    with pytest.raises(S3UploadError) as info:
        find(_Store(error=code), "k", 6 * MiB)
    assert info.value.code in LISTING_UNAVAILABLE_CODES


@pytest.mark.parametrize("code", ["AccessDenied", "NotImplemented"])
def test_listing_unavailable_is_raised_before_any_upload_is_touched(code):
    store = _Store(error=code)
    store.list_parts = None  # nothing may be asked about any upload when the listing failed
    with pytest.raises(S3UploadError, match="ListMultipartUploads"):
        find(store, "k", 6 * MiB)


class _Listing:
    """Quiet uploads of ``k`` served one per ListMultipartUploads page, each with one fitting part."""

    def __init__(self, initiated_hours_ago: list[int], vanished: frozenset[str] = frozenset()) -> None:
        now = datetime.now(UTC)
        self.uploads = [
            {"Key": "k", "UploadId": f"u{i}", "Initiated": now - timedelta(hours=h), "ChecksumAlgorithm": "CRC32C"}
            for i, h in enumerate(initiated_hours_ago)
        ]
        self.vanished = vanished
        self.listed: list[dict] = []
        self.parts_asked: list[str] = []
        self.meta = _Store().meta

    def list_multipart_uploads(self, **kwargs):
        self.listed.append(kwargs)
        ids = [u["UploadId"] for u in self.uploads]
        start = ids.index(kwargs["UploadIdMarker"]) + 1 if "UploadIdMarker" in kwargs else 0
        more = start + 1 < len(self.uploads)
        return {"Uploads": self.uploads[start : start + 1], "IsTruncated": more}

    def list_parts(self, **kwargs):
        self.parts_asked.append(kwargs["UploadId"])
        if kwargs["UploadId"] in self.vanished:
            raise ClientError({"Error": {"Code": "NoSuchUpload", "Message": "gone"}}, "ListParts")
        return {"Parts": [{"PartNumber": 1, "Size": 5 * MiB, "ETag": '"x"'}]}


def test_every_page_is_read_and_every_quiet_upload_is_a_candidate_newest_first():
    store = _Listing(initiated_hours_ago=[5, 1, 3])
    found = find(store, "k", 6 * MiB)
    assert len(store.listed) == 3  # the listing is followed to its last page
    assert found is not None and found.upload_id == "u1"  # initiated 1 hour ago: the newest
    # Every one is a candidate (the engine adopts the first whose parts verify), newest first.
    assert store.parts_asked == ["u1", "u2", "u0"]
    assert [
        f.upload_id for f in find_adoptable_uploads(store, BUCKET, "k", plan_parts(6 * MiB, 5 * MiB), "CRC32C")
    ] == [
        "u1",
        "u2",
        "u0",
    ]


def test_an_upload_that_vanishes_after_the_listing_is_skipped_quietly(caplog):
    store = _Listing(initiated_hours_ago=[1, 3], vanished=frozenset({"u0"}))
    with caplog.at_level(logging.WARNING):
        found = find(store, "k", 6 * MiB)
    assert found is not None and found.upload_id == "u1"
    assert "u0" not in caplog.text  # completed or aborted meanwhile: nothing was left alone


def test_naive_timestamps_are_read_as_utc():
    store = _Listing(initiated_hours_ago=[3])
    store.uploads[0]["Initiated"] = store.uploads[0]["Initiated"].replace(tzinfo=None)
    assert find(store, "k", 6 * MiB) is not None


# -- check_plan_fits --------------------------------------------------------------------------

PLAN = plan_parts(12 * MiB, 5 * MiB)  # parts of 5, 5 and 2 MiB


def stored(number: int, size: int, **fields) -> dict:
    return {"PartNumber": number, "Size": size, "ETag": '"e"', **fields}


def test_parts_of_the_plans_sizes_fit_in_any_order_and_with_gaps():
    assert check_plan_fits([stored(3, 2 * MiB), stored(1, 5 * MiB)], PLAN, "CRC32C", "CRC32C") is None
    assert check_plan_fits([], PLAN, None, "CRC32C") is None
    assert check_plan_fits([stored(1, 5 * MiB)], PLAN, "crc32c", "CRC32C") is None  # as some stores spell it


@pytest.mark.parametrize(
    ("parts", "stored_algorithm", "why"),
    [
        ([stored(4, 1)], "CRC32C", "holds part 4 but 12.0 MiB in parts of 5.0 MiB has only 3 parts"),
        ([stored(2, 4 * MiB)], "CRC32C", "its part 2 is 4,194,304 bytes but the plan gives it 5,242,880"),
        ([stored(3, 5 * MiB)], "CRC32C", "its part 3 is 5,242,880 bytes but the plan gives it 2,097,152"),
        ([stored(1, 5 * MiB)], "SHA256", "the earlier upload used checksum SHA256, this one uses CRC32C"),
    ],
)
def test_parts_that_cannot_be_this_plans_say_why(parts, stored_algorithm, why):
    assert why in check_plan_fits(parts, PLAN, stored_algorithm, "CRC32C")


# -- review_stored_part -----------------------------------------------------------------------

DATA = b"local bytes of part 1"


class LocalDigests:
    """``digest_local`` for review_stored_part, recording which hashes it was asked for."""

    def __init__(self, data: bytes = DATA) -> None:
        self.data = data
        self.asked: list[tuple[bool, bool]] = []

    def __call__(self, number: int, with_checksum: bool, with_md5: bool):
        self.asked.append((with_checksum, with_md5))
        return digest_part(number, self.data, algorithm="CRC32C" if with_checksum else None, with_md5=with_md5)


def crc32c(data: bytes) -> str:
    return digest_part(1, data, algorithm="CRC32C", with_md5=False).checksum


def md5_etag(data: bytes) -> str:
    return f'"{digest_part(1, data, algorithm=None, with_md5=True).md5.hex()}"'


def test_a_part_whose_checksum_matches_is_kept_and_only_the_checksum_is_computed():
    local = LocalDigests()
    part = stored(1, len(DATA), ChecksumCRC32C=crc32c(DATA), ETag='"opaque-under-kms"')
    assert review_stored_part(part, "CRC32C", local, etag_is_md5=False) is None
    assert local.asked == [(True, False)]


def test_a_part_whose_checksum_differs_is_sent_again():
    part = stored(1, len(DATA), ChecksumCRC32C=crc32c(b"other bytes of the same length"[: len(DATA)]))
    assert review_stored_part(part, "CRC32C", LocalDigests()) == "its bytes differ from the local file"


def test_a_part_of_another_size_is_sent_again_whatever_its_hashes():
    part = stored(1, len(DATA) + 1, ChecksumCRC32C=crc32c(DATA), ETag=md5_etag(DATA))
    assert review_stored_part(part, "CRC32C", LocalDigests()) == "its bytes differ from the local file"


def test_without_a_checksum_the_md5_etag_decides_and_only_the_md5_is_computed():
    local = LocalDigests()
    assert review_stored_part(stored(1, len(DATA), ETag=md5_etag(DATA)), "CRC32C", local) is None
    assert local.asked == [(False, True)]
    wrong = stored(1, len(DATA), ETag=md5_etag(b"x" * len(DATA)))
    assert review_stored_part(wrong, None, LocalDigests()) == "its bytes differ from the local file"


def test_a_part_that_cannot_be_verified_is_never_kept():
    local = LocalDigests()
    opaque = stored(1, len(DATA), ETag=md5_etag(DATA))  # looks like an MD5, but the upload is SSE-KMS
    assert "cannot be verified" in review_stored_part(opaque, "CRC32C", local, etag_is_md5=False)
    assert local.asked == []  # nothing is read for a part that can only be sent again
    multipart_looking = stored(1, len(DATA), ETag='"0123-2"')  # no checksum, and no MD5 in the ETag
    assert "cannot be verified" in review_stored_part(multipart_looking, "CRC32C", LocalDigests())


def test_a_part_whose_crc_was_forged_is_caught_by_its_md5_etag():
    """Other bytes with the local part's CRC32C (4 bytes adjusted): the MD5 ETag is checked too."""
    forged = forge_same_crc(DATA, "CRC32C")
    local = LocalDigests()
    part = stored(1, len(DATA), ChecksumCRC32C=crc32c(DATA), ETag=md5_etag(forged))
    assert review_stored_part(part, "CRC32C", local) == "its bytes differ from the local file"
    assert local.asked == [(True, True)]
    genuine = stored(1, len(DATA), ChecksumCRC32C=crc32c(DATA), ETag=md5_etag(DATA))
    assert review_stored_part(genuine, "CRC32C", LocalDigests()) is None
    assert not crc_only(genuine, "CRC32C", etag_is_md5=True)
    assert crc_only(genuine, "CRC32C", etag_is_md5=False)  # SSE-KMS: the CRC is all there is, and it is said


# -- identity of a found upload --------------------------------------------------------------------


def test_a_found_upload_whose_checksum_algorithm_no_answer_shows_is_adopted_on_its_md5s_and_said_so(caplog):
    """A store that keeps no checksums (Swift) shows no algorithm for any upload: the upload may still be
    adopted (its parts are proven by MD5 ETags, and the completion reports only what the store keeps)."""
    store = _Listing(initiated_hours_ago=[3])
    del store.uploads[0]["ChecksumAlgorithm"]  # nor does ListParts name one, nor list part checksums
    with caplog.at_level(logging.WARNING):
        found = find(store, "k", 6 * MiB)
    assert found is not None and found.checksum_algorithm is None
    assert "shows no checksum algorithm" in caplog.text and "MD5 ETags" in caplog.text


@pytest.mark.parametrize(
    ("extra_args", "adopted"),
    [
        ({}, True),
        ({"RequestPayer": "requester", "ExpectedBucketOwner": "123456789012"}, True),  # who asks, not the object
        ({"StorageClass": "STANDARD"}, True),  # shown by S3, and equal
        ({"StorageClass": "STANDARD_IA"}, False),  # shown by S3, and different
        ({"ContentType": "application/x-backup"}, False),
        ({"Metadata": {"owner": "backups"}}, False),
        ({"ACL": "bucket-owner-full-control"}, False),
        ({"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/backups"}, False),
        ({"SSECustomerAlgorithm": "AES256", "SSECustomerKey": "k" * 32}, False),
    ],
)
def test_a_found_upload_is_adopted_only_when_everything_the_task_sets_is_shown_by_s3(extra_args, adopted, caplog):
    store = _Listing(initiated_hours_ago=[3])
    store.uploads[0]["StorageClass"] = "STANDARD"
    store.meta = boto3.client("s3", region_name="us-east-1").meta  # the S3 model: which call takes which argument
    with caplog.at_level(logging.WARNING):
        found = find(store, "k", 6 * MiB, extra_args=extra_args)
    assert (found is not None) == adopted, caplog.text


def test_the_object_arguments_fingerprint_binds_every_setting_and_never_holds_a_key():
    base = {"ContentType": "application/x-backup", "Metadata": {"a": "1"}, "StorageClass": "STANDARD_IA"}
    fingerprint = object_args_fingerprint(base)
    assert object_args_fingerprint(dict(reversed(list(base.items())))) == fingerprint  # order does not matter
    assert object_args_fingerprint({**base, "RequestPayer": "requester"}) == fingerprint  # who asks: not bound
    for changed in ({"Metadata": {"a": "2"}}, {"ACL": "public-read"}, {"Tagging": "a=1"}, {"ContentType": "x/y"}):
        assert object_args_fingerprint({**base, **changed}) != fingerprint
    with_key = object_args_fingerprint({**base, "SSECustomerAlgorithm": "AES256", "SSECustomerKey": "s" * 32})
    assert "s" * 32 not in with_key and with_key != fingerprint
    assert with_key != object_args_fingerprint({**base, "SSECustomerAlgorithm": "AES256", "SSECustomerKey": "t" * 32})
