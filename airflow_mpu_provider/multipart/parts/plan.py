"""Part planning: how a file of a given size is cut into S3 multipart parts.

Everything here is pure arithmetic so that the rules S3 enforces (part sizes, part count, object
size) are checked before a single request is made, and so that a retry computes exactly the same
plan as the try it resumes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from airflow_mpu_provider.multipart.errors import InvalidUploadRequest
from airflow_mpu_provider.multipart.units import GiB, MiB, format_bytes

#: S3's smallest allowed part (every part but the last must be at least this big).
MIN_PART_SIZE = 5 * MiB
#: S3's largest allowed part.
MAX_PART_SIZE = 5 * GiB
#: S3 numbers parts 1..10,000.
MAX_PARTS = 10_000
#: The largest object a multipart upload can build: 10,000 parts of 5 GiB (48.8 TiB).
MAX_OBJECT_SIZE = MAX_PARTS * MAX_PART_SIZE
#: Part size used when the file is small enough for it; chosen from benchmarks/bench_upload.py.
DEFAULT_PART_SIZE = 16 * MiB
#: Automatic part sizes are rounded up to this, so that logs and resumed plans read cleanly.
PART_SIZE_GRANULARITY = MiB
#: An automatic plan cuts a file into at least this many parts where parts of 5 MiB or more allow it, so that
#: a few hundred MiB still give adaptive parallelism parts to put in flight (16 MiB parts left a 192 MiB
#: file 12 parts). Files of 1 GiB and more keep DEFAULT_PART_SIZE (or what 10,000 parts need).
TARGET_PARTS = 64


@dataclass(frozen=True, slots=True)
class Part:
    """One part of a plan: S3's 1-based part number and the byte range it covers."""

    number: int
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True, slots=True)
class PartPlan:
    """A file of ``size`` bytes cut into parts of ``part_size`` (the last one may be smaller).

    A zero-byte file still gets one (empty) part: S3 needs at least one part to complete an upload.
    """

    size: int
    part_size: int

    @property
    def count(self) -> int:
        if self.size == 0:
            return 1
        return -(-self.size // self.part_size)

    def part(self, number: int) -> Part:
        if not 1 <= number <= self.count:
            raise IndexError(f"part {number} is outside 1..{self.count}")
        offset = (number - 1) * self.part_size
        return Part(number, offset, min(self.part_size, self.size - offset))

    def __iter__(self) -> Iterator[Part]:
        return (self.part(n) for n in range(1, self.count + 1))

    def __len__(self) -> int:
        return self.count


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def choose_part_size(size: int, preferred: int = DEFAULT_PART_SIZE) -> int:
    """The smallest part size >= ``preferred`` that fits ``size`` bytes into 10,000 parts.

    This is what makes the defaults work from a few bytes up to S3's 48.8 TiB object limit with no
    tuning: small files keep the benchmarked default, huge files get the part size they need.
    """
    needed = _round_up(-(-size // MAX_PARTS), PART_SIZE_GRANULARITY) if size else 0
    return min(max(preferred, needed), MAX_PART_SIZE)


def auto_part_size(size: int) -> int:
    """The automatic part size for a file of ``size`` bytes: ``size / TARGET_PARTS`` rounded up to a MiB,
    within 5 MiB..DEFAULT_PART_SIZE, and never less than 10,000 parts need. A pure function of the size
    (a resumed plan must be the plan it resumes)."""
    spread = _round_up(-(-size // TARGET_PARTS), PART_SIZE_GRANULARITY) if size else 0
    return choose_part_size(size, min(DEFAULT_PART_SIZE, max(MIN_PART_SIZE, spread)))


def check_part_size(part_size: int) -> int:
    """``part_size`` if S3 accepts parts of that size (5 MiB..5 GiB), else InvalidUploadRequest saying so."""
    if part_size < MIN_PART_SIZE:
        raise InvalidUploadRequest(
            f"part_size={part_size:,} bytes is below S3's minimum of {MIN_PART_SIZE:,} bytes (5 MiB); "
            "use at least 5 MiB, or leave part_size unset to choose it automatically."
        )
    if part_size > MAX_PART_SIZE:
        raise InvalidUploadRequest(
            f"part_size={part_size:,} bytes is above S3's maximum of {MAX_PART_SIZE:,} bytes (5 GiB); "
            "use at most 5 GiB, or leave part_size unset to choose it automatically."
        )
    return part_size


def plan_parts(size: int, part_size: int | None = None) -> PartPlan:
    """Plan the parts for ``size`` bytes, with ``part_size`` fixed or (None) chosen automatically.

    Raises InvalidUploadRequest, naming what to change, for every plan S3 would reject.
    """
    if size < 0:
        raise InvalidUploadRequest(f"size must be >= 0, got {size}")
    if size > MAX_OBJECT_SIZE:
        raise InvalidUploadRequest(
            f"{format_bytes(size)} is larger than the largest object S3 can store with a multipart "
            f"upload ({format_bytes(MAX_OBJECT_SIZE)}: {MAX_PARTS:,} parts of {format_bytes(MAX_PART_SIZE)})."
        )
    if part_size is None:
        return PartPlan(size, auto_part_size(size))
    check_part_size(part_size)
    plan = PartPlan(size, part_size)
    if plan.count > MAX_PARTS:
        raise InvalidUploadRequest(
            f"part_size={format_bytes(part_size)} would cut {format_bytes(size)} into {plan.count:,} "
            f"parts, more than S3's {MAX_PARTS:,}; use part_size >= "
            f"{format_bytes(choose_part_size(size, MIN_PART_SIZE))}, or leave part_size unset to choose it "
            "automatically."
        )
    return plan


#: A stream of unknown size starts with DEFAULT_PART_SIZE parts and doubles the part size every
#: this many parts (up to 5 GiB), so that short streams use small parts and long ones still fit.
STREAM_PARTS_PER_SIZE = 1000


def stream_part_size(
    number: int,
    first: int = DEFAULT_PART_SIZE,
    *,
    growing: bool = True,
    parts_per_size: int = STREAM_PARTS_PER_SIZE,
) -> int:
    """Size of part ``number`` of a stream whose total size is not known up front.

    S3 allows parts of different sizes (only some S3-compatible stores, e.g. R2, insist on equal
    ones: ``growing=False`` keeps every part at ``first``). ``parts_per_size`` is how many parts
    share a size before it doubles; tests lower it to reach large parts with short streams.
    """
    if not growing:
        return first
    if parts_per_size < 1:
        raise InvalidUploadRequest(f"parts_per_size must be >= 1, got {parts_per_size}")
    return min(MAX_PART_SIZE, first << min((number - 1) // parts_per_size, 40))


def stream_capacity(
    first: int = DEFAULT_PART_SIZE, *, growing: bool = True, parts_per_size: int = STREAM_PARTS_PER_SIZE
) -> int:
    """The largest stream 10,000 parts of ``stream_part_size`` can hold."""
    if not growing:
        return first * MAX_PARTS
    return sum(
        stream_part_size(n, first, parts_per_size=parts_per_size) * min(parts_per_size, MAX_PARTS - n + 1)
        for n in range(1, MAX_PARTS + 1, parts_per_size)
    )
