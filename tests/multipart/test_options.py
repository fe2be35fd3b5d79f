"""UploadOptions.from_arguments: the one place callers build options, from one list of object arguments."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from airflow_mpu_provider.multipart.options import (
    OBJECT_ARGUMENT_NAMES,
    UploadOptions,
    check_object_arguments,
    object_arguments,
)
from airflow_mpu_provider.multipart.windows import UploadWindow


def test_from_arguments_forwards_any_field_the_engine_grows_and_checks_the_known_ones():
    """Fields added to UploadOptions later reach the engine without a change here; known fields
    (max_bandwidth and checksum_type among them) are checked; anything else is refused by name."""

    @dataclasses.dataclass(frozen=True)
    class Grown(UploadOptions):
        future_knob: int | None = None

    options = Grown.from_arguments(
        replace=False,
        future_knob=5,
        max_bandwidth=1024,
        checksum_type="composite",
        checksum_algorithm="crc32",
        tags={"a": "b"},
    )
    assert (options.future_knob, options.max_bandwidth, options.checksum_algorithm) == (5, 1024, "CRC32")
    assert (options.checksum_type, options.overwrite) == ("composite", False)
    assert options.extra_args == {"Tagging": "a=b"}
    with pytest.raises(ValueError, match="concurrency"):
        UploadOptions.from_arguments(replace=True, concurrency=0)
    with pytest.raises(ValueError, match="max_bandwidth"):
        UploadOptions.from_arguments(replace=True, max_bandwidth="32MiB")
    with pytest.raises(ValueError, match="checksum_type"):
        UploadOptions.from_arguments(replace=True, checksum_algorithm="SHA256", checksum_type="FULL_OBJECT")
    with pytest.raises(TypeError, match="unknown upload options \\['overwrite'\\]"):
        UploadOptions.from_arguments(replace=True, overwrite=False)  # that is replace=


def test_every_friendly_object_argument_becomes_a_create_argument_and_extra_args_wins():
    args = object_arguments(
        sse_kms_key_id="alias/k",
        storage_class="GLACIER_IR",
        content_type="text/plain",
        metadata={"a": 1},
        tags={"team": "data eng", "x": "y"},
        acl_policy="bucket-owner-full-control",
        extra_args={"CacheControl": "no-cache", "StorageClass": "STANDARD"},
    )
    assert args == {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "alias/k",
        "StorageClass": "STANDARD",
        "ContentType": "text/plain",
        "Metadata": {"a": "1"},
        "Tagging": "team=data+eng&x=y",
        "ACL": "bucket-owner-full-control",
        "CacheControl": "no-cache",
    }
    assert object_arguments(encrypt=True) == {"ServerSideEncryption": "AES256"}
    assert set(OBJECT_ARGUMENT_NAMES) == set(object_arguments.__code__.co_varnames[: len(OBJECT_ARGUMENT_NAMES)])


def test_contradictory_or_unknown_object_arguments_are_refused():
    with pytest.raises(ValueError, match="not both"):
        check_object_arguments(encrypt=True, sse_kms_key_id="alias/k")
    with pytest.raises(ValueError, match="not CreateMultipartUpload arguments"):
        UploadOptions.from_arguments(replace=True, extra_args={"Bodyy": b""})


def test_windows_and_deadlines_are_read_in_the_given_timezone_unless_already_parsed():
    options = UploadOptions.from_arguments(
        replace=True, upload_window="22:00-06:00", finish_by=timedelta(hours=1), window_timezone="Europe/Berlin"
    )
    assert isinstance(options.upload_window, UploadWindow)
    assert str(options.upload_window.tz) == "Europe/Berlin"
    assert options.finish_by > datetime.now(UTC)
    parsed = UploadWindow.parse("01:00-02:00", "UTC")
    assert UploadOptions.from_arguments(replace=True, upload_window=parsed).upload_window is parsed
