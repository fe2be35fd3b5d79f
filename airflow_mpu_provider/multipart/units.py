"""Units and how they are written in log lines and messages: sizes, durations, ages. Pure functions.

Binary units throughout (a MiB is 1,048,576 bytes), as S3's part limits are stated in them.
"""

from __future__ import annotations

from datetime import timedelta

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB


def format_bytes(n: float) -> str:
    """Human-readable binary size, as used in every log line and error message."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_rate(bytes_per_second: float) -> str:
    """A rate in the units of ``format_bytes`` per second ("16.0 MiB/s"): progress, caps and summaries alike."""
    return f"{format_bytes(bytes_per_second)}/s"


def plural(n: int, noun: str, plural_form: str | None = None) -> str:
    """``n`` and the noun in the right number, with thousands separators: "1 part", "2 parts", "10,000 parts"."""
    return f"{n:,} {noun if n == 1 else plural_form or noun + 's'}"


def format_duration(seconds: float | timedelta) -> str:
    """A duration of seconds to hours, compactly ("5s", "2m05s", "3h01m01s"): elapsed times, ETAs, quiet windows."""
    if isinstance(seconds, timedelta):
        seconds = seconds.total_seconds()
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_age(seconds: float) -> str:
    """An age that may run to days, in whole seconds ("7 days, 2:03:04"): how old a leftover upload is."""
    return str(timedelta(seconds=int(seconds)))
