"""Record the arguments of every S3 call a botocore client makes (after the caller built them)."""

from __future__ import annotations

from typing import Any


def record_calls(client: Any) -> list[tuple[str, dict[str, Any]]]:
    """A list that fills with ``(operation name, API parameters)`` for each call ``client`` makes.

    Hooked on botocore's ``provide-client-params`` event, which sees the parameters exactly as the
    caller passed them, before botocore adds its own (checksums, encoding).
    """
    calls: list[tuple[str, dict[str, Any]]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.name, dict(params)))

    client.meta.events.register("provide-client-params.s3.*", record, unique_id="tests-record-calls")
    return calls


def missing_args(calls: list[tuple[str, dict[str, Any]]], expected: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """Each call that lacks one of ``expected`` (or carries another value), with what it lacks."""
    return [
        (operation, sorted(name for name, value in expected.items() if params.get(name) != value))
        for operation, params in calls
        if any(params.get(name) != value for name, value in expected.items())
    ]
