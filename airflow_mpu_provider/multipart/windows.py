"""Upload windows, bandwidth timetables and deadlines: times of day in a timezone, turned into instants.

Pure: no I/O, no Airflow, no clock (every function takes the instant it is asked about), so that tests
pass fixed datetimes. Times of day are wall-clock times in the window's timezone (``zoneinfo``), and
every answer is an aware instant, so daylight saving changes are handled where they happen:

- a time that does not exist on a spring-forward day (02:30 in Europe/Berlin on the last Sunday of
  March) is the instant the clocks show it would have been (03:30 local, the same UTC instant as
  02:30 standard time): a window "02:30-05:00" opens an hour "late" by the clock, on time by the sun;
- a time that occurs twice on a fall-back day is its first occurrence;
- a window is as long as the clocks say: "22:00-06:00" lasts 7 hours on a spring-forward night and 9
  on a fall-back night.

    window = UploadWindow.parse("22:00-06:00, 12:00-13:00", "Europe/Berlin")
    window.is_open(at); window.closes_at(at); window.next_opening(at)

    timetable = BandwidthTimetable.parse({"08:00": 4 * MiB, "19:00": 64 * MiB, "23:00": None}, "UTC")
    timetable.rate_at(at); timetable.next_change(at)
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from airflow_mpu_provider.multipart import validation
from airflow_mpu_provider.multipart.errors import InvalidUploadRequest
from airflow_mpu_provider.multipart.units import format_bytes

#: Seconds in a day; "24:00" (the end of a day) is the only time of day that reaches it.
DAY = 24 * 3600
#: "HH:MM", or "HH:MM:SS" (windows of seconds, as the end-to-end tests use).
_TIME = re.compile(r"^\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*$")
#: How far projections look ahead before giving up (segments of open window and constant rate).
_MAX_SEGMENTS = 10_000


def resolve_timezone(value: Any, *, name: str = "window_timezone") -> tzinfo:
    """A timezone from an IANA name ("Europe/Berlin", "UTC") or a ``tzinfo`` (a DAG's pendulum timezone
    included); None is UTC."""
    if value is None:
        return UTC
    if isinstance(value, tzinfo):
        return value
    if not isinstance(value, str) or not value.strip():
        raise InvalidUploadRequest(
            f"{name} must be an IANA timezone name such as 'Europe/Berlin' or 'UTC', or a tzinfo; got {value!r}."
        )
    try:
        return ZoneInfo(value.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidUploadRequest(
            f"{name}: unknown timezone {value!r}; use an IANA name such as 'Europe/Berlin', 'America/New_York' "
            "or 'UTC' (see zoneinfo.available_timezones())."
        ) from None


def timezone_name(tz: tzinfo) -> str:
    """How a timezone is written in messages: its IANA key where it has one."""
    for attribute in ("key", "name", "zone"):
        value = getattr(tz, attribute, None)
        if isinstance(value, str) and value:
            return value
    return str(tz)


def parse_time_of_day(text: Any, *, what: str, allow_end_of_day: bool = False) -> int:
    """``"HH:MM"`` (or ``"HH:MM:SS"``) as seconds after midnight; "24:00" only where ``allow_end_of_day`` (the
    end of a range)."""
    match = _TIME.match(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidUploadRequest(f"{what}: {text!r} is not a time of day; write it as HH:MM, e.g. '22:00'.")
    hours, minutes, seconds = int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)
    if minutes > 59 or seconds > 59 or hours > 24 or (hours == 24 and (minutes or seconds or not allow_end_of_day)):
        end = " ('24:00' only as the end of a range)" if hours == 24 else ""
        raise InvalidUploadRequest(f"{what}: {text!r} is not a time of day (00:00 to 23:59){end}.")
    return hours * 3600 + minutes * 60 + seconds


def _hhmm(second: int) -> str:
    hours, rest = divmod(second, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}" + (f":{seconds:02d}" if seconds else "")


def _instant(day: date, second: int, tz: tzinfo) -> datetime:
    """The UTC instant the clocks in ``tz`` show ``second`` after midnight of ``day`` (see the module doc)."""
    if second >= DAY:
        day, second = day + timedelta(days=1), second - DAY
    hours, rest = divmod(second, 3600)
    local = datetime.combine(day, time(hours, rest // 60, rest % 60), tzinfo=tz)
    return local.astimezone(UTC)


def _aware(at: datetime, what: str = "the time asked about") -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {at!r}")
    return at


@dataclass(frozen=True)
class UploadWindow:
    """The times of day when an upload may send: ranges of seconds after local midnight in ``tz``.

    A range whose end is before its start runs past midnight ("22:00-06:00"). Ranges may touch
    ("06:00-08:00, 08:00-09:00" is one window 06:00-09:00) but not overlap, and may not cover the whole day.
    """

    ranges: tuple[tuple[int, int], ...]
    tz: tzinfo

    @classmethod
    def parse(cls, spec: Any, tz: Any = None) -> UploadWindow:
        """From "22:00-06:00", "22:00-06:00, 12:00-13:00" or a list of such strings, in ``tz`` (name or
        tzinfo; None: UTC). An ``UploadWindow`` is returned as it is."""
        if isinstance(spec, UploadWindow):
            return spec
        zone = resolve_timezone(tz)
        if isinstance(spec, str):
            texts = [part for part in spec.split(",")]
        elif isinstance(spec, Sequence) and not isinstance(spec, bytes | bytearray):
            texts = [text for item in spec for text in (item.split(",") if isinstance(item, str) else [item])]
        else:
            raise InvalidUploadRequest(
                f"upload_window must be a string such as '22:00-06:00' (several ranges separated by commas) or a "
                f"list of such strings; got {spec!r}."
            )
        ranges = tuple(_parse_range(text) for text in texts if not (isinstance(text, str) and not text.strip()))
        if not ranges:
            raise InvalidUploadRequest("upload_window is empty; give at least one range such as '22:00-06:00'.")
        _check_ranges(ranges)
        return cls(ranges, zone)

    def describe(self) -> str:
        return f"{', '.join(f'{_hhmm(s)}-{_hhmm(e)}' for s, e in self.ranges)} ({timezone_name(self.tz)})"

    def _intervals(self, at: datetime) -> list[tuple[datetime, datetime]]:
        """The window's open intervals from two days before ``at`` to two days after, touching ones merged."""
        today = _aware(at).astimezone(self.tz).date()
        intervals = []
        for offset in range(-2, 3):
            day = today + timedelta(days=offset)
            for start, end in self.ranges:
                opens = _instant(day, start, self.tz)
                closes = _instant(day, end if end > start else end + DAY, self.tz)
                if closes > opens:  # a range inside a spring-forward gap has no length that day
                    intervals.append((opens, closes))
        intervals.sort()
        merged: list[tuple[datetime, datetime]] = []
        for opens, closes in intervals:
            if merged and opens <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], closes))
            else:
                merged.append((opens, closes))
        return merged

    def is_open(self, at: datetime) -> bool:
        return any(opens <= at < closes for opens, closes in self._intervals(at))

    def closes_at(self, at: datetime) -> datetime | None:
        """When the window open at ``at`` closes (None: it is closed at ``at``)."""
        for opens, closes in self._intervals(at):
            if opens <= at < closes:
                return closes
        return None

    def next_opening(self, at: datetime) -> datetime:
        """``at`` itself if the window is open then, else the next instant it opens."""
        for opens, closes in self._intervals(at):
            if at < closes:
                return max(opens, at)
        raise AssertionError("a window opens every day")  # pragma: no cover


def _parse_range(text: Any) -> tuple[int, int]:
    if not isinstance(text, str) or text.count("-") != 1:
        raise InvalidUploadRequest(
            f"upload_window: {text!r} is not a range of times; write it as HH:MM-HH:MM, e.g. '22:00-06:00'."
        )
    first, second = text.split("-")
    what = f"upload_window range {text.strip()!r}"
    start = parse_time_of_day(first, what=what)
    end = parse_time_of_day(second, what=what, allow_end_of_day=True)
    if start == end or (start == 0 and end == DAY):
        raise InvalidUploadRequest(
            f"{what} is {'empty' if start == end else 'the whole day'}: "
            + ("it opens and closes at the same time." if start == end else "leave upload_window unset instead.")
        )
    return start, end


def _check_ranges(ranges: Iterable[tuple[int, int]]) -> None:
    """Refuse ranges that overlap (touching is fine) or that together cover the whole day."""
    pieces: list[tuple[int, int, str]] = []
    for start, end in ranges:
        label = f"{_hhmm(start)}-{_hhmm(end)}"
        if end > start:
            pieces.append((start, end, label))
        else:
            pieces.append((start, DAY, label))
            if end:
                pieces.append((0, end, label))
    pieces.sort()
    for (_, first_end, first), (second_start, _, second) in itertools.pairwise(pieces):
        if second_start < first_end:
            raise InvalidUploadRequest(
                f"upload_window ranges {first} and {second} overlap; make them disjoint (ranges may touch)."
            )
    if sum(end - start for start, end, _ in pieces) >= DAY:
        raise InvalidUploadRequest(
            "upload_window covers the whole day, so it never closes; leave upload_window unset instead."
        )


@dataclass(frozen=True)
class BandwidthTimetable:
    """A bandwidth cap that changes at times of day: ``(second, bytes per second or None = uncapped)``,
    sorted; each rate holds from its time until the next one's, the last one past midnight until the first."""

    entries: tuple[tuple[int, int | None], ...]
    tz: tzinfo

    @classmethod
    def parse(cls, spec: Any, tz: Any = None) -> BandwidthTimetable:
        """From ``{"08:00": 4 * MiB, "19:00": 64 * MiB, "23:00": None}`` in ``tz`` (None: UTC)."""
        if isinstance(spec, BandwidthTimetable):
            return spec
        if not isinstance(spec, Mapping) or not spec:
            raise InvalidUploadRequest(
                f"a max_bandwidth timetable must be a non-empty dict of 'HH:MM' times to bytes per second (None: "
                f"uncapped), e.g. {{'08:00': 4 * 1024**2, '23:00': None}}; got {spec!r}."
            )
        zone = resolve_timezone(tz)
        entries: dict[int, int | None] = {}
        for when, rate in spec.items():
            second = parse_time_of_day(when, what="max_bandwidth timetable")
            if second in entries:
                raise InvalidUploadRequest(f"max_bandwidth timetable: {_hhmm(second)} is given twice.")
            entries[second] = validation.max_bandwidth(rate)
        return cls(tuple(sorted(entries.items())), zone)

    def describe(self) -> str:
        rates = ", ".join(f"{_hhmm(m)} {describe_rate(r)}" for m, r in self.entries)
        return f"{rates} ({timezone_name(self.tz)})"

    def _changes(self, at: datetime) -> list[tuple[datetime, int | None]]:
        today = _aware(at).astimezone(self.tz).date()
        changes = [
            (_instant(today + timedelta(days=offset), second, self.tz), rate)
            for offset in range(-2, 3)
            for second, rate in self.entries
        ]
        changes.sort(key=lambda change: change[0])
        return changes

    def rate_at(self, at: datetime) -> int | None:
        """The cap in force at ``at`` (bytes per second; None: uncapped)."""
        rate = self.entries[-1][1]
        for instant, value in self._changes(at):
            if instant > at:
                break
            rate = value
        return rate

    def next_change(self, at: datetime) -> datetime | None:
        """The next instant after ``at`` when the cap changes (None: it never does)."""
        current = self.rate_at(at)
        for instant, rate in self._changes(at):
            if instant > at and rate != current:
                return instant
        return None


def describe_rate(rate: float | None) -> str:
    return "uncapped" if rate is None else f"{format_bytes(rate)}/s"


def bandwidth_setting(value: Any, tz: Any = None) -> int | BandwidthTimetable | None:
    """``max_bandwidth`` as given to the operator or the hook: None, bytes per second, or a timetable dict."""
    if isinstance(value, Mapping | BandwidthTimetable):
        return BandwidthTimetable.parse(value, tz)
    return validation.max_bandwidth(value)


def finish_by_setting(value: Any) -> Any:
    """Check ``finish_by`` where it can be checked before the timezone and the start are known: a datetime,
    a ``timedelta`` (after the upload starts), "HH:MM" (the next such time) or an ISO 8601 date-time string."""
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, timedelta):
        return validation.duration("finish_by", value, positive=True)
    if isinstance(value, str):
        deadline_at(value, UTC, datetime(2000, 1, 1, tzinfo=UTC))  # the format only
        return value
    raise InvalidUploadRequest(
        f"finish_by must be a datetime, a timedelta, 'HH:MM' or an ISO 8601 date-time string; got {value!r}."
    )


def deadline_at(value: Any, tz: tzinfo, start: datetime) -> datetime | None:
    """``finish_by`` as an instant: a naive datetime or ISO string is read in ``tz``; "HH:MM" is the next such
    time after ``start``; a ``timedelta`` counts from ``start``."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return start + value
    if isinstance(value, str) and _TIME.match(value):
        second = parse_time_of_day(value, what="finish_by")
        local_day = start.astimezone(tz).date()
        for offset in range(3):
            instant = _instant(local_day + timedelta(days=offset), second, tz)
            if instant > start:
                return instant
        raise AssertionError("unreachable")  # pragma: no cover
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidUploadRequest(
                f"finish_by: {value!r} is neither 'HH:MM' nor an ISO 8601 date-time such as '2026-12-08T06:00'."
            ) from None
    if not isinstance(value, datetime):
        raise InvalidUploadRequest(f"finish_by must be a datetime, a timedelta or a string; got {value!r}.")
    return value if value.tzinfo is not None and value.utcoffset() is not None else value.replace(tzinfo=tz)


def project_finish(
    left: int,
    at: datetime,
    *,
    link_rate: float | None,
    window: UploadWindow | None = None,
    timetable: BandwidthTimetable | None = None,
) -> datetime | None:
    """When ``left`` bytes are sent, starting at ``at``: at ``link_rate`` (the rate measured so far), never
    above the timetable's cap, only while the window is open. None when no rate is known (no measurement
    and no cap) or the end is out of reach."""
    t = _aware(at)
    remaining = float(left)
    if remaining <= 0:
        return t
    for _ in range(_MAX_SEGMENTS):
        if window is not None and not window.is_open(t):
            t = window.next_opening(t)
            continue
        closes = window.closes_at(t) if window is not None else None
        change = timetable.next_change(t) if timetable is not None else None
        ends = [e for e in (closes, change) if e is not None]
        cap = timetable.rate_at(t) if timetable is not None else None
        rates = [r for r in (link_rate, cap) if r]
        if not rates:
            return None
        rate = min(rates)
        needed = remaining / rate
        end = min(ends) if ends else None
        if end is None or t + timedelta(seconds=needed) <= end:
            return t + timedelta(seconds=needed)
        remaining -= rate * (end - t).total_seconds()
        t = end
    return None
