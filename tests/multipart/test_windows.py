"""Upload windows, bandwidth timetables, deadlines and projections: pure time arithmetic on fixed datetimes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import ClassVar
from zoneinfo import ZoneInfo

import pytest

from airflow_mpu_provider.multipart.errors import InvalidUploadRequest
from airflow_mpu_provider.multipart.units import MiB
from airflow_mpu_provider.multipart.windows import (
    BandwidthTimetable,
    UploadWindow,
    bandwidth_setting,
    deadline_at,
    finish_by_setting,
    project_finish,
)

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def berlin(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=BERLIN, fold=fold)


class TestWindow:
    def test_overnight_range(self):
        w = UploadWindow.parse("22:00-06:00")
        assert w.is_open(utc(2026, 12, 7, 23, 0))
        assert w.is_open(utc(2026, 12, 8, 5, 59))
        assert not w.is_open(utc(2026, 12, 8, 6, 0))  # the end is not in the window
        assert w.is_open(utc(2026, 12, 7, 22, 0))
        assert w.closes_at(utc(2026, 12, 7, 23, 0)) == utc(2026, 12, 8, 6, 0)
        assert w.closes_at(utc(2026, 12, 8, 1, 0)) == utc(2026, 12, 8, 6, 0)
        assert w.closes_at(utc(2026, 12, 8, 12, 0)) is None
        assert w.next_opening(utc(2026, 12, 8, 12, 0)) == utc(2026, 12, 8, 22, 0)
        assert w.next_opening(utc(2026, 12, 8, 6, 0)) == utc(2026, 12, 8, 22, 0)
        at = utc(2026, 12, 8, 2, 0)
        assert w.next_opening(at) == at  # open now

    def test_several_ranges_as_string_or_list(self):
        for spec in ("22:00-06:00, 12:00-13:00", ["22:00-06:00", "12:00-13:00"]):
            w = UploadWindow.parse(spec)
            assert w.is_open(utc(2026, 12, 8, 12, 30))
            assert not w.is_open(utc(2026, 12, 8, 13, 0))
            assert w.next_opening(utc(2026, 12, 8, 7, 0)) == utc(2026, 12, 8, 12, 0)
            assert w.next_opening(utc(2026, 12, 8, 13, 0)) == utc(2026, 12, 8, 22, 0)
            assert w.closes_at(utc(2026, 12, 8, 12, 30)) == utc(2026, 12, 8, 13, 0)

    def test_seconds(self):
        w = UploadWindow.parse("10:00:05-10:00:15, 10:00:25-10:00:35")
        assert w.next_opening(utc(2026, 12, 8, 10, 0, 16)) == utc(2026, 12, 8, 10, 0, 25)
        assert w.closes_at(utc(2026, 12, 8, 10, 0, 5)) == utc(2026, 12, 8, 10, 0, 15)
        assert w.describe() == "10:00:05-10:00:15, 10:00:25-10:00:35 (UTC)"

    def test_touching_ranges_are_one_window(self):
        w = UploadWindow.parse("22:00-24:00, 00:00-06:00, 06:00-07:00")
        assert w.closes_at(utc(2026, 12, 7, 22, 30)) == utc(2026, 12, 8, 7, 0)

    def test_timezone_and_answers_in_utc_instants(self):
        w = UploadWindow.parse("22:00-06:00", "Europe/Berlin")
        # 21:30 UTC is 22:30 in Berlin (winter, UTC+1)
        assert w.is_open(utc(2026, 12, 7, 21, 30))
        assert w.closes_at(utc(2026, 12, 7, 21, 30)) == utc(2026, 12, 8, 5, 0)
        assert w.next_opening(utc(2026, 12, 8, 12, 0)) == utc(2026, 12, 8, 21, 0)
        assert w.describe() == "22:00-06:00 (Europe/Berlin)"

    def test_spring_forward_night_is_an_hour_shorter(self):
        # Berlin: 2026-03-29 02:00 CET -> 03:00 CEST
        w = UploadWindow.parse("22:00-06:00", BERLIN)
        opens = w.next_opening(berlin(2026, 3, 28, 12, 0))
        closes = w.closes_at(opens)
        assert opens == berlin(2026, 3, 28, 22, 0)
        assert closes == berlin(2026, 3, 29, 6, 0)
        assert closes - opens == timedelta(hours=7)

    def test_fall_back_night_is_an_hour_longer(self):
        # Berlin: 2026-10-25 03:00 CEST -> 02:00 CET
        w = UploadWindow.parse("22:00-06:00", BERLIN)
        opens = w.next_opening(berlin(2026, 10, 24, 12, 0))
        assert w.closes_at(opens) - opens == timedelta(hours=9)

    def test_a_start_in_the_spring_forward_gap_opens_when_the_clock_shows_the_hour_after(self):
        w = UploadWindow.parse("02:30-05:00", BERLIN)
        opens = w.next_opening(berlin(2026, 3, 29, 0, 0))
        assert opens == berlin(2026, 3, 29, 3, 30).astimezone(UTC)
        assert not w.is_open(berlin(2026, 3, 29, 3, 15))
        assert w.is_open(berlin(2026, 3, 29, 3, 45))

    def test_a_range_inside_the_gap_keeps_its_length(self):
        w = UploadWindow.parse("02:10-02:40", BERLIN)
        # No such minutes on 2026-03-29: the range is the half hour the clocks show an hour later.
        opens = w.next_opening(berlin(2026, 3, 29, 0, 0))
        assert opens == berlin(2026, 3, 29, 3, 10)
        assert w.closes_at(opens) == berlin(2026, 3, 29, 3, 40)

    @pytest.mark.parametrize(
        "spec, message",
        [
            ("22:00", "not a range"),
            ("22-06", "not a time of day"),
            ("25:00-06:00", "not a time of day"),
            ("22:60-06:00", "not a time of day"),
            ("22:00:60-06:00", "not a time of day"),
            ("24:00-06:00", "only as the end of a range"),
            ("10:00-10:00", "empty"),
            ("00:00-24:00", "whole day"),
            ("22:00-06:00, 05:00-07:00", "overlap"),
            ("08:00-12:00, 11:00-13:00", "overlap"),
            ("06:00-18:00, 18:00-06:00", "whole day"),
            ("", "empty"),
            (42, "must be a string"),
            (["22:00-06:00", 7], "not a range"),
        ],
    )
    def test_bad_windows_are_refused(self, spec, message):
        with pytest.raises(InvalidUploadRequest, match=message):
            UploadWindow.parse(spec)

    def test_unknown_timezone_is_refused(self):
        with pytest.raises(InvalidUploadRequest, match="unknown timezone 'Europe/Berln'"):
            UploadWindow.parse("22:00-06:00", "Europe/Berln")

    def test_naive_datetimes_are_refused(self):
        with pytest.raises(ValueError, match="timezone-aware"):
            UploadWindow.parse("22:00-06:00").is_open(datetime(2026, 12, 7, 23, 0))


class TestTimetable:
    TABLE: ClassVar[dict] = {"08:00": 4 * MiB, "19:00": 64 * MiB, "23:00": None}

    def test_rate_at_and_next_change(self):
        t = BandwidthTimetable.parse(self.TABLE)
        assert t.rate_at(utc(2026, 12, 8, 7, 59)) is None  # 23:00's rate, past midnight
        assert t.rate_at(utc(2026, 12, 8, 8, 0)) == 4 * MiB
        assert t.rate_at(utc(2026, 12, 8, 18, 59)) == 4 * MiB
        assert t.rate_at(utc(2026, 12, 8, 19, 0)) == 64 * MiB
        assert t.rate_at(utc(2026, 12, 8, 23, 30)) is None
        assert t.next_change(utc(2026, 12, 8, 3, 0)) == utc(2026, 12, 8, 8, 0)
        assert t.next_change(utc(2026, 12, 8, 8, 0)) == utc(2026, 12, 8, 19, 0)
        assert t.next_change(utc(2026, 12, 8, 23, 0)) == utc(2026, 12, 9, 8, 0)

    def test_timezone(self):
        t = BandwidthTimetable.parse(self.TABLE, "Europe/Berlin")
        assert t.rate_at(utc(2026, 12, 8, 7, 30)) == 4 * MiB  # 08:30 in Berlin
        assert t.next_change(utc(2026, 12, 8, 7, 30)) == utc(2026, 12, 8, 18, 0)

    def test_one_entry_never_changes(self):
        t = BandwidthTimetable.parse({"00:00": MiB})
        assert t.rate_at(utc(2026, 12, 8, 3, 0)) == MiB
        assert t.next_change(utc(2026, 12, 8, 3, 0)) is None

    def test_equal_neighbours_are_no_change(self):
        t = BandwidthTimetable.parse({"08:00": MiB, "12:00": MiB, "20:00": None})
        assert t.next_change(utc(2026, 12, 8, 9, 0)) == utc(2026, 12, 8, 20, 0)

    @pytest.mark.parametrize(
        "spec, message",
        [
            ({}, "non-empty dict"),
            ({"8am": MiB}, "not a time of day"),
            ({"24:00": MiB}, "only as the end"),
            ({"08:00": 0}, "at least 1 byte"),
            ({"08:00": 1.5e6}, "whole number"),
            ({"08:00": "4MiB"}, "strings are not parsed"),
            ({"8:00": MiB, "08:00": None}, "given twice"),
        ],
    )
    def test_bad_timetables_are_refused(self, spec, message):
        with pytest.raises(InvalidUploadRequest, match=message):
            BandwidthTimetable.parse(spec)

    def test_bandwidth_setting_takes_both_forms(self):
        assert bandwidth_setting(None) is None
        assert bandwidth_setting(MiB) == MiB
        assert isinstance(bandwidth_setting(self.TABLE, "UTC"), BandwidthTimetable)
        with pytest.raises(InvalidUploadRequest, match="whole number"):
            bandwidth_setting(2.5)


class TestDeadline:
    def test_forms(self):
        start = utc(2026, 12, 7, 23, 0)
        assert deadline_at("06:00", UTC, start) == utc(2026, 12, 8, 6, 0)
        assert deadline_at("23:30", UTC, start) == utc(2026, 12, 7, 23, 30)
        assert deadline_at("06:00", BERLIN, start) == utc(2026, 12, 8, 5, 0)
        assert deadline_at("2026-12-08T06:00", BERLIN, start) == utc(2026, 12, 8, 5, 0)
        assert deadline_at("2026-12-08T06:00+00:00", BERLIN, start) == utc(2026, 12, 8, 6, 0)
        assert deadline_at(timedelta(hours=2), UTC, start) == utc(2026, 12, 8, 1, 0)
        assert deadline_at(None, UTC, start) is None

    @pytest.mark.parametrize("value", ["6am", "25:00", 3, "tomorrow"])
    def test_bad_deadlines_are_refused(self, value):
        with pytest.raises(InvalidUploadRequest, match="finish_by"):
            finish_by_setting(value)


class TestProjection:
    def test_constant_rate(self):
        assert project_finish(3600 * MiB, utc(2026, 12, 7, 22, 0), link_rate=MiB) == utc(2026, 12, 7, 23, 0)

    def test_across_windows(self):
        w = UploadWindow.parse("22:00-06:00")
        # 10 hours of sending at 1 MiB/s, 8 per night: done 2 hours into the second night.
        end = project_finish(10 * 3600 * MiB, utc(2026, 12, 7, 22, 0), link_rate=MiB, window=w)
        assert end == utc(2026, 12, 9, 0, 0)
        # Started while closed: waits for the opening first.
        assert project_finish(3600 * MiB, utc(2026, 12, 7, 12, 0), link_rate=MiB, window=w) == utc(2026, 12, 7, 23, 0)

    def test_never_above_the_timetable_cap(self):
        t = BandwidthTimetable.parse({"00:00": MiB, "01:00": None})
        # 2 MiB/s link, but 1 MiB/s until 01:00: 3600 MiB by 01:00, then the rest at the link's rate.
        end = project_finish(3600 * MiB + 7200 * MiB, utc(2026, 12, 8, 0, 0), link_rate=2 * MiB, timetable=t)
        assert end == utc(2026, 12, 8, 2, 0)
        # No measurement yet: the cap alone; uncapped and unmeasured: unknown.
        assert project_finish(3600 * MiB, utc(2026, 12, 8, 0, 0), link_rate=None, timetable=t) == utc(2026, 12, 8, 1, 0)
        assert project_finish(MiB, utc(2026, 12, 8, 2, 0), link_rate=None, timetable=t) is None
