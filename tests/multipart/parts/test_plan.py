from __future__ import annotations

import itertools

import pytest

from airflow_mpu_provider.multipart.errors import InvalidUploadRequest
from airflow_mpu_provider.multipart.parts.plan import (
    DEFAULT_PART_SIZE,
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    TARGET_PARTS,
    choose_part_size,
    plan_parts,
)
from airflow_mpu_provider.multipart.units import GiB, MiB, TiB


def test_parts_cover_the_file_exactly_once_in_ascending_order():
    plan = plan_parts(50 * MiB + 7, 8 * MiB)
    parts = list(plan)
    assert [p.number for p in parts] == list(range(1, 8))
    assert parts[0].offset == 0
    assert all(a.end == b.offset for a, b in itertools.pairwise(parts))
    assert parts[-1].end == 50 * MiB + 7
    assert parts[-1].length == 2 * MiB + 7
    assert all(p.length == 8 * MiB for p in parts[:-1])


def test_zero_byte_file_is_one_empty_part():
    plan = plan_parts(0)
    assert plan.count == 1
    assert plan.part(1).length == 0


def test_exact_multiple_has_no_empty_trailing_part():
    plan = plan_parts(32 * MiB, 8 * MiB)
    assert plan.count == 4
    assert plan.part(4).length == 8 * MiB


def test_default_part_size_for_ordinary_files():
    assert plan_parts(1 * GiB).part_size == DEFAULT_PART_SIZE
    assert plan_parts(100 * GiB).part_size == DEFAULT_PART_SIZE


@pytest.mark.parametrize(
    ("size", "part_size", "parts"),
    [
        (192 * MiB, 5 * MiB, 39),  # was 16 MiB: 12 parts, too few for the parallelism a WAN link wants
        (320 * MiB, 5 * MiB, TARGET_PARTS),
        (512 * MiB, 8 * MiB, TARGET_PARTS),
        (700 * MiB + 1, 11 * MiB, TARGET_PARTS),
        (1 * GiB - 1, 16 * MiB, TARGET_PARTS),
        (20 * MiB, 5 * MiB, 4),  # the 5 MiB floor
    ],
)
def test_files_under_a_gib_get_enough_parts_for_the_parallelism(size, part_size, parts):
    plan = plan_parts(size)
    assert (plan.part_size, plan.count) == (part_size, parts)
    assert plan == plan_parts(size)  # deterministic: a resumed plan is the plan it resumes


@pytest.mark.parametrize("size", [200 * GiB, 5 * TiB, MAX_OBJECT_SIZE - 1, MAX_OBJECT_SIZE])
def test_automatic_part_size_fits_any_legal_size_into_10000_parts(size):
    plan = plan_parts(size)
    assert plan.count <= MAX_PARTS
    assert MIN_PART_SIZE <= plan.part_size <= MAX_PART_SIZE
    assert plan.part_size % MiB == 0


def test_5_tib_gets_the_smallest_mib_rounded_part_size():
    assert choose_part_size(5 * TiB) == 525 * MiB  # ceil(5 TiB / 10,000) = 524.3 MiB


def test_part_size_below_minimum_is_refused_with_the_fix():
    with pytest.raises(InvalidUploadRequest, match="below S3's minimum.*5 MiB"):
        plan_parts(100 * MiB, 5 * MiB - 1)


def test_part_size_above_maximum_is_refused():
    with pytest.raises(InvalidUploadRequest, match="above S3's maximum"):
        plan_parts(100 * MiB, 5 * GiB + 1)


def test_too_many_parts_is_refused_and_names_a_part_size_that_works():
    with pytest.raises(InvalidUploadRequest, match=r"10,001 parts.*part_size >= 6.0 MiB"):
        plan_parts(10_001 * 5 * MiB, 5 * MiB)


def test_object_larger_than_s3_allows_is_refused():
    with pytest.raises(InvalidUploadRequest, match="larger than the largest object"):
        plan_parts(MAX_OBJECT_SIZE + 1)


def test_part_outside_the_plan():
    with pytest.raises(IndexError):
        plan_parts(10 * MiB, 5 * MiB).part(3)
