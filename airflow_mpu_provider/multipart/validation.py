"""Checks of the numbers users pass (sizes, counts, durations), made before any S3 call.

Python lets ``part_size=8e6`` (a float), ``concurrency=True`` (a bool is an int) or
``max_buffer_bytes="1GiB"`` through to the place that uses them, which then fails deep inside an
upload that already exists. These checks refuse them up front, with a message naming the argument
and saying what to pass instead. They raise InvalidUploadRequest (a ValueError): the arguments can
never work, so nothing is created and nothing is kept for a retry.
"""

from __future__ import annotations

import math
from datetime import timedelta
from numbers import Integral, Real
from typing import Any

from airflow_mpu_provider.multipart.errors import InvalidUploadRequest
from airflow_mpu_provider.multipart.parts.plan import MAX_PARTS, check_part_size

#: More parts in flight than an upload can have parts makes no sense (and would start that many threads).
MAX_CONCURRENCY = MAX_PARTS


def _kind(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def whole_number(
    name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None, unit: str = ""
) -> int:
    """``value`` as an int within [minimum, maximum]; bools, floats (even 8e6) and strings are refused."""
    what = f"a whole number{f' of {unit}' if unit else ''} (an int)"
    if isinstance(value, bool) or not isinstance(value, Integral):
        if isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and value == int(value):
            fix = f"pass {name}={int(value):_} (or int(...)): S3 needs whole numbers, and {value!r} is a float"
        elif isinstance(value, str):
            fix = f"pass a number such as {name}={max(minimum or 1, 1) * 8:_}; strings such as {value!r} are not parsed"
        else:
            fix = f"pass {what}"
        raise InvalidUploadRequest(f"{name} must be {what}, got {_kind(value)}; {fix}.")
    number = int(value)
    if minimum is not None and number < minimum:
        raise InvalidUploadRequest(f"{name} must be at least {minimum:,}, got {number:,}.")
    if maximum is not None and number > maximum:
        raise InvalidUploadRequest(f"{name} must be at most {maximum:,}, got {number:,}.")
    return number


def part_size_setting(value: Any) -> int | None:
    """None (choose automatically) or a whole number of bytes within S3's part sizes (5 MiB..5 GiB)."""
    if value is None:
        return None
    return check_part_size(whole_number("part_size", value, unit="bytes"))


def concurrency(value: Any) -> int:
    return whole_number("concurrency", value, minimum=1, maximum=MAX_CONCURRENCY, unit="parts in flight")


def max_buffer_bytes(value: Any) -> int:
    return whole_number("max_buffer_bytes", value, minimum=1, unit="bytes")


def max_bandwidth(value: Any) -> int | None:
    """None (no cap) or a whole number of bytes per second, for all parts of one upload together."""
    if value is None:
        return None
    if isinstance(value, str):
        raise InvalidUploadRequest(
            f"max_bandwidth must be a whole number of bytes per second (an int), got {_kind(value)}; strings are "
            "not parsed: pass e.g. max_bandwidth=32 * 1024 * 1024 for 32 MiB/s."
        )
    rate = whole_number("max_bandwidth", value, unit="bytes per second")
    if rate < 1:
        raise InvalidUploadRequest(
            f"max_bandwidth must be at least 1 byte per second, got {rate:,}; pass None for no cap, "
            f"or e.g. max_bandwidth={32 * 1024 * 1024:_} for 32 MiB/s."
        )
    return rate


def seconds(name: str, value: Any, *, positive: bool = False, numeric_strings: bool = False) -> float:
    """A duration as seconds: an int, a float or a ``timedelta`` (not a bool, not NaN or infinite).

    ``positive`` refuses 0; negative durations are always refused. ``numeric_strings`` accepts "3600",
    which is what a templated field renders to.
    """
    if numeric_strings and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise InvalidUploadRequest(
                f"{name} must be a number of seconds or a datetime.timedelta, got {value!r}; pass e.g. {name}=3600."
            ) from None
    if isinstance(value, timedelta):
        number = value.total_seconds()
    elif isinstance(value, Real) and not isinstance(value, bool):
        number = float(value)
    else:
        raise InvalidUploadRequest(
            f"{name} must be a number of seconds or a datetime.timedelta, got {_kind(value)}; "
            f"pass e.g. {name}=3600 or {name}=timedelta(hours=1)."
        )
    if not math.isfinite(number):
        raise InvalidUploadRequest(f"{name} must be a finite number of seconds, got {value!r}.")
    if number < 0 or (positive and number == 0):
        bound = "greater than 0" if positive else "0 or more"
        raise InvalidUploadRequest(f"{name} must be {bound} seconds, got {value!r}.")
    return number


def optional_text(name: str, value: Any) -> str | None:
    """A string argument (a connection id, a KMS key id, ...) or None; a rendered template stays a str."""
    if value is None or isinstance(value, str):
        return value
    raise InvalidUploadRequest(f"{name} must be a string or None, got {_kind(value)}.")


def duration(name: str, value: Any, *, positive: bool = False) -> timedelta:
    """A duration given as seconds or a ``timedelta``, as a ``timedelta`` (see ``seconds``)."""
    number = seconds(name, value, positive=positive)
    return value if isinstance(value, timedelta) else timedelta(seconds=number)


def adopt_quiet_after(value: Any) -> timedelta | None:
    """``adopt_quiet_after``: a duration, or None for "never adopt an upload found by listing"."""
    return None if value is None else duration("adopt_quiet_after", value)
