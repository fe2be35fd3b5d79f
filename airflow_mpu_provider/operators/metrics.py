"""The operator's figures: in Airflow's metrics (StatsD or OpenTelemetry, whichever the deployment configured),
and a completed upload's summary line in the task log.

Every metric name starts with ``mpu.`` and is tagged with the task's ``dag_id`` and ``task_id`` (README: "Metrics").
Metrics never fail an upload: a backend that fails is logged as a warning and the task goes on.

``Stats`` comes from the common.compat provider: that is the instance the task runner configures on every
Airflow version. On 3.3, ``airflow.observability.stats`` is a second copy that only an executor process
configures, so its metrics reach StatsD from LocalExecutor tasks (forked from it) and are silently dropped
from tasks that no executor forked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow_mpu_provider.multipart import UploadPaused, UploadResult
from airflow_mpu_provider.multipart.units import format_bytes, format_rate, plural

#: Prefix of every metric the operator sends through Airflow's Stats (README: "Metrics").
METRICS_PREFIX = "mpu"


def _send(task: Any, failure: str, send: Callable[[Any, dict[str, str]], None]) -> None:
    """``send(Stats, tags)``; a failure is logged as ``failure: error``, never raised."""
    try:
        from airflow.providers.common.compat.sdk import Stats

        send(Stats, {"dag_id": task.dag_id, "task_id": task.task_id})
    except Exception as e:
        task.log.warning("%s: %s", failure, e)


def upload_metrics(task: Any, result: UploadResult | None) -> None:
    """``result`` after a completed upload: uploads, bytes sent and resumed, parts sent, duration (ms),
    throughput (bytes/s, only if it took any time); None after an abort: ``mpu.aborts``."""

    def send(stats: Any, tags: dict[str, str]) -> None:
        if result is None:
            stats.incr(f"{METRICS_PREFIX}.aborts", tags=tags)
            return
        stats.incr(f"{METRICS_PREFIX}.uploads", tags=tags)
        stats.incr(f"{METRICS_PREFIX}.bytes_sent", result.bytes_sent, tags=tags)
        stats.incr(f"{METRICS_PREFIX}.bytes_resumed", result.bytes_resumed, tags=tags)
        stats.incr(f"{METRICS_PREFIX}.parts_sent", result.parts_sent, tags=tags)
        stats.timing(f"{METRICS_PREFIX}.duration", result.seconds * 1000, tags=tags)
        if result.seconds > 0:
            stats.gauge(f"{METRICS_PREFIX}.throughput", round(result.bytes_sent / result.seconds), tags=tags)

    _send(task, "Could not send the upload metrics (this does not change the task's outcome)", send)


def pause_metrics(task: Any, paused: UploadPaused) -> None:
    """``mpu.pauses`` and the bytes this run sent before the upload window closed."""

    def send(stats: Any, tags: dict[str, str]) -> None:
        stats.incr(f"{METRICS_PREFIX}.pauses", tags=tags)
        stats.incr(f"{METRICS_PREFIX}.bytes_sent", paused.sent_bytes, tags=tags)

    _send(task, "Could not send the pause metrics (this does not change the task's outcome)", send)


def deadline_metric(task: Any, on_time: bool, projected: Any) -> None:
    """``mpu.deadline_at_risk``: counted each time the projected finish passes ``finish_by`` (the engine's
    schedule calls it with its judgement: ``on_time``, and the ``projected`` finish)."""
    if on_time:
        return

    def send(stats: Any, tags: dict[str, str]) -> None:
        stats.incr(f"{METRICS_PREFIX}.deadline_at_risk", tags=tags)

    _send(task, "Could not send the deadline metric", send)


def log_summary(log: Any, what: str, result: UploadResult) -> None:
    """The task log's line for a completed upload of ``what`` (the file, or a command's output)."""
    log.info(
        "Uploaded %s to s3://%s/%s: %s (%d sent now, %d resumed), ETag %s, %s in %.1f s (%s).",
        what,
        result.bucket,
        result.key,
        plural(result.parts, "part"),
        result.parts_sent,
        result.parts_resumed,
        result.etag,
        format_bytes(result.bytes_sent),
        result.seconds,
        format_rate(result.bytes_sent / result.seconds if result.seconds > 0 else 0.0),
    )
