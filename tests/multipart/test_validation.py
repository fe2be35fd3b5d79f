"""The number checks: wrong types refused with a message naming the argument and what to pass."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from fractions import Fraction

import pytest

from airflow_mpu_provider.multipart import validation
from airflow_mpu_provider.multipart.errors import InvalidUploadRequest
from airflow_mpu_provider.multipart.units import GiB, MiB


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            8e6,
            r"part_size must be a whole number of bytes \(an int\), got 8000000.0 \(float\); pass part_size=8_000_000",
        ),
        (8.5 * MiB, r"part_size must be a whole number of bytes.*a float"),
        (True, r"part_size must be a whole number of bytes \(an int\), got True \(bool\)"),
        ("8MiB", r"part_size must be .*got '8MiB' \(str\).*strings such as '8MiB' are not parsed"),
        (Decimal("8388608"), r"part_size must be .*Decimal"),
        (float("inf"), r"part_size must be .*inf"),
        (5 * MiB - 1, r"part_size=5,242,879 bytes is below S3's minimum"),
        (5 * GiB + 1, r"above S3's maximum"),
        (-1, r"part_size=-1 bytes is below S3's minimum"),
    ],
)
def test_part_size(value, message):
    with pytest.raises(InvalidUploadRequest, match=message):
        validation.part_size_setting(value)


def test_good_values_pass_through_as_ints():
    assert validation.part_size_setting(None) is None
    assert validation.part_size_setting(8 * MiB) == 8 * MiB
    assert validation.concurrency(1) == 1
    assert validation.max_buffer_bytes(GiB) == GiB


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        (validation.concurrency, True, r"concurrency must be a whole number of parts in flight \(an int\), got True"),
        (validation.concurrency, 4.0, r"concurrency must be .* pass concurrency=4"),
        (validation.concurrency, 0, r"concurrency must be at least 1, got 0"),
        (validation.concurrency, 10_001, r"concurrency must be at most 10,000"),
        (validation.max_buffer_bytes, "1GiB", r"max_buffer_bytes must be a whole number of bytes.*'1GiB'"),
        (validation.max_buffer_bytes, 1e9, r"max_buffer_bytes must be .*pass max_buffer_bytes=1_000_000_000"),
        (validation.max_buffer_bytes, 0, r"max_buffer_bytes must be at least 1"),
    ],
)
def test_counts_and_sizes(check, value, message):
    with pytest.raises(InvalidUploadRequest, match=message):
        check(value)


def test_seconds_accepts_numbers_and_timedeltas():
    assert validation.seconds("progress_interval", 0) == 0.0
    assert validation.seconds("progress_interval", 2.5) == 2.5
    assert validation.seconds("progress_interval", Fraction(1, 2)) == 0.5
    assert validation.seconds("progress_interval", timedelta(minutes=1)) == 60.0
    assert validation.seconds("command_timeout", " 3600 ", positive=True, numeric_strings=True) == 3600.0
    assert validation.duration("older_than", 60) == timedelta(minutes=1)
    assert validation.duration("older_than", timedelta(days=2)) == timedelta(days=2)


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        (-1, {}, r"progress_interval must be 0 or more seconds, got -1"),
        (timedelta(seconds=-1), {}, r"progress_interval must be 0 or more seconds"),
        (True, {}, r"progress_interval must be a number of seconds or a datetime.timedelta, got True \(bool\)"),
        ("10", {}, r"progress_interval must be a number of seconds .*got '10' \(str\)"),
        (float("nan"), {}, r"progress_interval must be a finite number of seconds"),
        (0, {"positive": True}, r"progress_interval must be greater than 0 seconds"),
        ("soon", {"numeric_strings": True}, r"progress_interval must be a number of seconds .*got 'soon'"),
    ],
)
def test_seconds_refuses(value, kwargs, message):
    with pytest.raises(InvalidUploadRequest, match=message):
        validation.seconds("progress_interval", value, **kwargs)


def test_refusals_are_value_errors_and_not_resumable():
    """InvalidUploadRequest: a ValueError for callers, and never a reason to keep an upload for a retry."""
    from airflow_mpu_provider.multipart import base_engine

    with pytest.raises(ValueError):
        validation.concurrency(True)
    assert issubclass(InvalidUploadRequest, base_engine._NOT_RESUMABLE)


def test_optional_text():
    assert validation.optional_text("storage_class", None) is None
    assert validation.optional_text("storage_class", "GLACIER_IR") == "GLACIER_IR"
    with pytest.raises(InvalidUploadRequest, match=r"storage_class must be a string or None, got 3 \(int\)"):
        validation.optional_text("storage_class", 3)
