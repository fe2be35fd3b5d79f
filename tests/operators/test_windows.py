"""The operator's upload windows: refused at parse time when they cannot work, a reschedule before anything is
created outside the window, and a window closing mid-upload: kept and recorded like a retry's upload, the
task rescheduled, the next run resuming it (in-process moto, a clock the test sets)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from airflow.exceptions import AirflowRescheduleException

from airflow_mpu_provider.multipart.errors import InvalidUploadRequest
from airflow_mpu_provider.multipart.units import MiB
from airflow_mpu_provider.operators.multipart_upload import STATE_KEY, MultipartUploadOperator
from airflow_mpu_provider.version_compat import AIRFLOW_V_3_1_8_PLUS, AIRFLOW_V_3_3_PLUS
from tests.conftest import incomplete_uploads, make_file, sha256_file, sha256_object
from tests.operators.test_metrics import RecordingStats

#: upload_window is refused on older Airflow (see test_refused_where_the_scheduler_would_not_wait).
needs_3_1_8 = pytest.mark.skipif(not AIRFLOW_V_3_1_8_PLUS, reason="upload_window needs Airflow >= 3.1.8")

NIGHT = datetime(2026, 12, 7, 23, 0, tzinfo=UTC)
MORNING = datetime(2026, 12, 8, 6, 0, tzinfo=UTC)
NEXT_OPENING = datetime(2026, 12, 8, 22, 0, tzinfo=UTC)


def op(**kwargs) -> MultipartUploadOperator:
    kwargs.setdefault("file", "/data/dump.sql")
    kwargs.setdefault("key", "s3://test-bucket/dumps/x.sql")
    return MultipartUploadOperator(task_id="upload", **kwargs)


class Store(dict):
    """task_state_store as the task runner hands it out (Airflow >= 3.3)."""

    def set(self, key, value):
        self[key] = value

    def delete(self, key):
        self.pop(key, None)


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def context(store: Store | None) -> tuple[dict, dict]:
    pushed: dict = {}
    ti = SimpleNamespace(try_number=1, max_tries=0, xcom_push=lambda key, value: pushed.__setitem__(key, value))
    ctx = {"ti": ti}
    if store is not None:
        ctx["task_state_store"] = store
    return ctx, pushed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"upload_window": "22:00-6"}, "not a time of day"),
        ({"upload_window": "22:00-06:00, 05:00-07:00"}, "overlap"),
        ({"upload_window": "10:00-10:00"}, "empty"),
        ({"upload_window": "22:00-06:00", "window_timezone": "Europe/Berln"}, "unknown timezone"),
        ({"upload_window": "22:00-06:00", "file": None, "command": "pg_dump db"}, "file=... uploads only"),
        ({"finish_by": "06:00", "file": None, "command": "pg_dump db"}, "file=... uploads only"),
        ({"upload_window": "22:00-06:00", "resume": False}, "needs resume=True"),
        ({"finish_by": "6 in the morning"}, "finish_by"),
        ({"max_bandwidth": {"08:00": 4 * MiB, "25:00": None}}, "not a time of day"),
        ({"max_bandwidth": {"08:00": 0}}, "at least 1 byte"),
    ],
)
def test_bad_windows_are_refused_when_the_dag_is_parsed(kwargs, message, monkeypatch):
    from airflow_mpu_provider import version_compat

    monkeypatch.setattr(version_compat, "AIRFLOW_V_3_1_8_PLUS", True)  # the other refusals, on every version
    with pytest.raises(InvalidUploadRequest, match=message):
        op(**kwargs)


def test_refused_where_the_scheduler_would_not_wait(monkeypatch):
    """Airflow 3.1.3's scheduler re-runs a non-sensor task that rescheduled itself at once (tests/e2e/test_windows.py
    saw it loop): a window there would start the task over and over, so it is refused when the DAG is parsed."""
    from airflow_mpu_provider import version_compat

    monkeypatch.setattr(version_compat, "AIRFLOW_V_3_1_8_PLUS", False)
    with pytest.raises(InvalidUploadRequest, match="upload_window needs Airflow >= 3.1.8"):
        op(upload_window="22:00-06:00")
    op(max_bandwidth={"08:00": MiB, "23:00": None}, finish_by="06:00")  # no reschedule involved: fine


@needs_3_1_8
def test_templated_window_is_checked_once_rendered():
    operator = op(upload_window="{{ var.value.window }}")
    operator.upload_window = "22:00-6"  # what the template rendered
    with pytest.raises(InvalidUploadRequest, match="not a time of day"):
        operator.execute({})
    assert {"upload_window", "window_timezone", "finish_by"} <= set(MultipartUploadOperator.template_fields)


@needs_3_1_8
def test_outside_the_window_reschedules_before_anything_is_created(mock_s3, monkeypatch):
    operator = op(upload_window="22:00-06:00")
    monkeypatch.setattr(operator, "_window_now", Clock(MORNING))
    monkeypatch.setattr(operator.hook, "upload_client_for", lambda *a: pytest.fail("no S3 client outside the window"))
    ctx, pushed = context(Store())
    with pytest.raises(AirflowRescheduleException) as rescheduled:
        operator.execute(ctx)
    assert rescheduled.value.reschedule_date == NEXT_OPENING
    assert incomplete_uploads(mock_s3, "test-bucket") == []
    assert pushed == {}


@needs_3_1_8
def test_an_opening_seconds_away_is_waited_for_not_rescheduled(mock_s3, tmp_path, monkeypatch):
    import time

    path = make_file(tmp_path / "dump", 6 * MiB)
    operator = op(file=str(path), upload_window="22:00-06:00")
    started, base = time.monotonic(), datetime(2026, 12, 7, 21, 59, 58, tzinfo=UTC)  # 2 s before the opening
    monkeypatch.setattr(operator, "_window_now", lambda: base + timedelta(seconds=time.monotonic() - started))
    monkeypatch.setattr(operator.hook, "upload_client_for", lambda *a: mock_s3)
    result = operator.execute(context(Store())[0])  # no AirflowRescheduleException
    assert result["parts_sent"] == result["parts"] >= 1
    assert sha256_object(mock_s3, "test-bucket", "dumps/x.sql") == sha256_file(path)


@pytest.fixture
def stats(monkeypatch) -> RecordingStats:
    import airflow.providers.common.compat.sdk as compat

    recorder = RecordingStats()
    monkeypatch.setattr(compat, "Stats", recorder, raising=False)
    return recorder


@needs_3_1_8
@pytest.mark.parametrize("with_store", [True, False], ids=["task_state_store", "listing-fallback"])
def test_window_closing_mid_upload_keeps_records_reschedules_and_the_next_run_resumes(
    mock_s3, tmp_path, monkeypatch, put_part_hooks, stats, with_store
):
    if with_store and not AIRFLOW_V_3_3_PLUS:
        pytest.skip("task_state_store is Airflow >= 3.3's")
    path = make_file(tmp_path / "dump", 26 * MiB)  # 6 parts of 5 MiB
    clock = Clock(NIGHT)

    def close_during_part_2(number: int) -> None:
        if number == 2:
            clock.at = MORNING

    put_part_hooks.before = close_during_part_2
    store = Store() if with_store else None

    def run() -> tuple[MultipartUploadOperator, dict]:
        operator = op(
            file=str(path),
            part_size=5 * MiB,
            concurrency=1,
            upload_window="22:00-06:00",
            adopt_quiet_after=0,  # the fallback adopts what it finds by listing at once
            retries=0,  # a pause keeps the upload whatever the retry policy
            finish_by=NIGHT,  # already due: the first judgement says it cannot be met
        )
        monkeypatch.setattr(operator.hook, "upload_client_for", lambda *a: mock_s3)
        monkeypatch.setattr(operator, "_window_now", clock)
        return operator, context(store)

    operator, (ctx, pushed) = run()
    with pytest.raises(AirflowRescheduleException) as rescheduled:
        operator.execute(ctx)
    assert rescheduled.value.reschedule_date == NEXT_OPENING
    uploads = incomplete_uploads(mock_s3, "test-bucket")
    assert len(uploads) == 1  # kept, not aborted
    upload_id = uploads[0]["UploadId"]
    if with_store:
        assert store[STATE_KEY]["upload_id"] == upload_id  # the record a retry reads
    paused = pushed["upload_paused"]
    assert (paused["upload_id"], paused["stored_parts"], paused["stored_bytes"]) == (upload_id, 2, 10 * MiB)
    assert paused["left_bytes"] == 16 * MiB
    assert paused["resumes_at"] == NEXT_OPENING.isoformat()
    assert paused["rate"] > 0
    counted = [(kind, name, value) for kind, name, value, _ in stats.calls]
    assert ("incr", "mpu.pauses", 1) in counted
    assert ("incr", "mpu.bytes_sent", 10 * MiB) in counted  # what this run sent before the window closed
    assert counted.count(("incr", "mpu.deadline_at_risk", 1)) == 1  # once, however many parts followed

    put_part_hooks.clear()
    clock.at = NEXT_OPENING
    operator, (ctx, pushed) = run()
    result = operator.execute(ctx)
    assert (result["upload_id"], result["parts_resumed"], result["parts_sent"]) == (upload_id, 2, 4)
    assert sha256_object(mock_s3, "test-bucket", "dumps/x.sql") == sha256_file(path)
    assert incomplete_uploads(mock_s3, "test-bucket") == []
    if with_store:
        assert STATE_KEY not in store
