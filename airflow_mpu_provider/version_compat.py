"""Airflow-version switches, kept in this provider as the amazon provider keeps its own copy.

Copied rather than imported from another provider on purpose (see the amazon provider's
``version_compat.py``): providers must not depend on each other's internals.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


@functools.cache
def get_base_airflow_version_tuple() -> tuple[int, int, int]:
    from airflow import __version__
    from packaging.version import Version

    airflow_version = Version(__version__)
    return airflow_version.major, airflow_version.minor, airflow_version.micro


AIRFLOW_V_3_0_PLUS = get_base_airflow_version_tuple() >= (3, 0, 0)
#: Airflow 3.3 added ``context["task_state_store"]``, which survives retries (XCom does not).
AIRFLOW_V_3_3_PLUS = get_base_airflow_version_tuple() >= (3, 3, 0)
#: Airflow 3.1.8 (3.1.3 did not) makes the scheduler wait for the reschedule date of any task that rescheduled
#: itself, not only of reschedule-mode sensors: what ``upload_window`` relies on.
AIRFLOW_V_3_1_8_PLUS = get_base_airflow_version_tuple() >= (3, 1, 8)

if AIRFLOW_V_3_0_PLUS:
    from airflow.sdk import BaseOperator
else:  # pragma: no cover - Airflow 2.x
    from airflow.models import BaseOperator  # type: ignore[no-redef]


def secrets_masker() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Airflow's ``(redact, mask_secret)``: ``airflow.sdk.log`` has both from Airflow 3.1.8 on (its
    ``mask_secret`` also tells the task supervisor); Airflow 3.1.3 has ``redact`` only in
    ``airflow.sdk.execution_time.secrets_masker`` (deprecated in 3.3, so tried second)."""
    from airflow.sdk.log import mask_secret

    try:
        from airflow.sdk.log import redact
    except ImportError:  # Airflow < 3.1.8
        from airflow.sdk.execution_time.secrets_masker import redact
    return redact, mask_secret


__all__ = [
    "AIRFLOW_V_3_0_PLUS",
    "AIRFLOW_V_3_1_8_PLUS",
    "AIRFLOW_V_3_3_PLUS",
    "BaseOperator",
    "get_base_airflow_version_tuple",
    "secrets_masker",
]
