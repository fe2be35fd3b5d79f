"""Sizes, durations and ages as every log line and message writes them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from airflow_mpu_provider.multipart.units import GiB, KiB, MiB, TiB, format_age, format_bytes, format_duration


def test_units_are_binary():
    assert (KiB, MiB, GiB, TiB) == (2**10, 2**20, 2**30, 2**40)


def test_format_bytes():
    assert format_bytes(0) == "0 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(5 * TiB) == "5.0 TiB"


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (5 * MiB, "5.0 MiB"),
        (5 * GiB, "5.0 GiB"),
        (48.8 * 1024 * TiB, "49971.2 TiB"),  # past the largest unit: still TiB, never an error
        (-2 * MiB, "-2.0 MiB"),
    ],
)
def test_format_bytes_at_unit_boundaries_and_beyond(n, text):
    assert format_bytes(n) == text


def test_format_duration():
    assert format_duration(5) == "5s"
    assert format_duration(125) == "2m05s"
    assert format_duration(3 * 3600 + 61) == "3h01m01s"


def test_format_duration_takes_timedeltas_and_never_goes_negative():
    assert format_duration(timedelta(minutes=15)) == "15m00s"
    assert format_duration(59.6) == "1m00s"  # rounded, not truncated into "0m60s"
    assert format_duration(-3) == "0s"  # a clock that ran backwards reads as no time at all
    assert format_duration(30 * 3600) == "30h00m00s"  # hours are not rolled into days


def test_format_age_runs_to_days_in_whole_seconds():
    assert format_age(59.9) == "0:00:59"
    assert format_age(7 * 86400 + 3661) == "7 days, 1:01:01"


def test_plural_and_rate():
    from airflow_mpu_provider.multipart.units import format_rate, plural

    assert [plural(n, "part") for n in (0, 1, 2, 10_000)] == ["0 parts", "1 part", "2 parts", "10,000 parts"]
    assert plural(1, "parallel worker") == "1 parallel worker"
    assert format_rate(16 * 1024 * 1024) == "16.0 MiB/s"  # the unit of sizes and of the bandwidth cap's lines
