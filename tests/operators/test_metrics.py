"""The operator's metrics (operators/metrics.py), without a StatsD server (tests/e2e/test_metrics.py: the real one)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from airflow_mpu_provider.multipart import UploadResult
from airflow_mpu_provider.operators.metrics import deadline_metric, log_summary, pause_metrics, upload_metrics
from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator


class RecordingStats:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple] = []
        self.fail = fail

    def _record(self, kind: str, stat: str, value: float = 1, *args, tags=None, **kwargs) -> None:
        if self.fail:
            raise OSError("statsd host unreachable")
        self.calls.append((kind, stat, value, tags))

    def incr(self, stat, count=1, *args, **kwargs):
        self._record("incr", stat, count, *args, **kwargs)

    def gauge(self, stat, value, *args, **kwargs):
        self._record("gauge", stat, value, *args, **kwargs)

    def timing(self, stat, dt, *args, **kwargs):
        self._record("timing", stat, dt, *args, **kwargs)


@pytest.fixture
def stats(monkeypatch) -> RecordingStats:
    import airflow.providers.common.compat.sdk as compat

    recorder = RecordingStats()
    monkeypatch.setattr(compat, "Stats", recorder, raising=False)
    return recorder


def op(**kwargs) -> MultipartUploadOperator:
    kwargs.setdefault("file", "/data/f")
    return MultipartUploadOperator(task_id="upload", key="s3://b/k", **kwargs)


def result(**overrides) -> UploadResult:
    fields = dict(
        bucket="b", key="k", upload_id="u", etag="e-3", size=30, part_size=10, parts=3, parts_sent=2,
        parts_resumed=1, bytes_sent=20, bytes_resumed=10, seconds=4.0,
    )  # fmt: skip
    return UploadResult(**{**fields, **overrides})


def test_a_completed_upload_sends_every_figure_under_the_prefix(stats):
    upload_metrics(op(), result())
    tags = {"dag_id": stats.calls[0][3]["dag_id"], "task_id": "upload"}
    assert stats.calls == [
        ("incr", "mpu.uploads", 1, tags),
        ("incr", "mpu.bytes_sent", 20, tags),
        ("incr", "mpu.bytes_resumed", 10, tags),
        ("incr", "mpu.parts_sent", 2, tags),
        ("timing", "mpu.duration", 4000.0, tags),
        ("gauge", "mpu.throughput", 5, tags),
    ]


def test_an_instant_upload_sends_no_throughput_rather_than_dividing_by_zero(stats):
    upload_metrics(op(), result(seconds=0.0))
    assert "mpu.throughput" not in [c[1] for c in stats.calls]


def test_an_abort_counts_one_abort_and_nothing_else(stats):
    upload_metrics(op(), None)
    assert [(c[0], c[1], c[2]) for c in stats.calls] == [("incr", "mpu.aborts", 1)]


@pytest.mark.parametrize("what", ["file", "command"])
@pytest.mark.parametrize(("aborted", "expected"), [(True, ["mpu.aborts"]), (False, [])])
def test_a_failed_run_counts_an_abort_only_when_the_upload_was_aborted(stats, monkeypatch, what, aborted, expected):
    """A failure whose upload is kept for the retry is not an abort: the retry will complete it. A file's
    and a command's upload count alike: the hook tells the operator (on_aborted) when it aborted one."""
    operator = op(file=None, command="true") if what == "command" else op()

    def upload(*args, on_aborted, **kwargs):
        if aborted:
            on_aborted()
        raise ConnectionError("dropped")

    monkeypatch.setattr(operator.hook, f"upload_{what}", upload)
    with pytest.raises(ConnectionError):
        operator.execute({})
    assert [c[1] for c in stats.calls] == expected


def test_a_metrics_backend_failure_never_fails_the_task(monkeypatch):
    import airflow.providers.common.compat.sdk as compat

    monkeypatch.setattr(compat, "Stats", RecordingStats(fail=True), raising=False)
    warnings: list[str] = []
    operator = op()
    monkeypatch.setattr(type(operator), "log", SimpleNamespace(warning=lambda msg, *a: warnings.append(msg % a)))
    upload_metrics(operator, result())  # does not raise
    pause_metrics(operator, SimpleNamespace(sent_bytes=1))
    deadline_metric(operator, False, None)
    assert warnings == [
        "Could not send the upload metrics (this does not change the task's outcome): statsd host unreachable",
        "Could not send the pause metrics (this does not change the task's outcome): statsd host unreachable",
        "Could not send the deadline metric: statsd host unreachable",
    ]


def test_a_pause_counts_the_pause_and_the_bytes_this_run_sent(stats):
    pause_metrics(op(), SimpleNamespace(sent_bytes=10))
    assert [(c[0], c[1], c[2]) for c in stats.calls] == [("incr", "mpu.pauses", 1), ("incr", "mpu.bytes_sent", 10)]
    assert stats.calls[0][3]["task_id"] == "upload"


def test_a_deadline_is_counted_only_when_at_risk(stats):
    deadline_metric(op(), True, None)
    assert stats.calls == []
    deadline_metric(op(), False, None)
    assert [(c[0], c[1], c[2]) for c in stats.calls] == [("incr", "mpu.deadline_at_risk", 1)]


def test_the_operator_sends_them_by_the_names_its_upload_code_calls(stats):
    operator = op()
    operator._emit_metrics(None)
    operator._deadline_metric(False, None)
    assert [c[1] for c in stats.calls] == ["mpu.aborts", "mpu.deadline_at_risk"]


def test_the_summary_line_says_what_went_where_and_how_fast():
    lines: list[str] = []
    log_summary(SimpleNamespace(info=lambda msg, *a: lines.append(msg % a)), "/data/f", result())
    assert lines == ["Uploaded /data/f to s3://b/k: 3 parts (2 sent now, 1 resumed), ETag e-3, 20 B in 4.0 s (5 B/s)."]
