"""operators/arguments.py: what the operator refuses when the DAG is parsed, and a docstring that documents
every argument (the README's "Arguments" explains them at length)."""

from __future__ import annotations

import inspect
import re

import pytest

from airflow_mpu_provider.multipart.errors import InvalidUploadRequest
from airflow_mpu_provider.operators.arguments import check_checksum_type, is_template
from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator


def test_every_argument_is_documented_once_in_the_class_docstring():
    parameters = inspect.signature(MultipartUploadOperator.__init__).parameters
    arguments = [name for name in parameters if name not in ("self", "kwargs")]
    documented = re.findall(r":param (\w+):", MultipartUploadOperator.__doc__ or "")
    assert sorted(documented) == sorted(arguments)


def test_a_checksum_type_the_algorithm_cannot_give_is_refused_an_unknown_algorithm_left_for_execute():
    with pytest.raises(InvalidUploadRequest, match="FULL_OBJECT"):
        check_checksum_type("SHA256", "FULL_OBJECT")
    check_checksum_type("CRC32C", "FULL_OBJECT")
    check_checksum_type("MD17", "FULL_OBJECT")  # execute says the algorithm is unknown


def test_templates_are_strings_airflow_renders():
    assert is_template("{{ ds }}") and not is_template("22:00-06:00") and not is_template(3600)
