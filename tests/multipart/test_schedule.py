"""A file upload's schedule while it runs: the engine pausing when its window closes (in-process moto, a clock
the test moves), resuming in the next window, the timetable switching the cap, the deadline warning."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from airflow_mpu_provider.multipart.file_engine import FileUploadEngine
from airflow_mpu_provider.multipart.options import UploadOptions
from airflow_mpu_provider.multipart.parts.plan import plan_parts
from airflow_mpu_provider.multipart.schedule import TimetableBandwidth, UploadPaused, UploadSchedule
from airflow_mpu_provider.multipart.sources.file import FileSource
from airflow_mpu_provider.multipart.units import KiB, MiB
from airflow_mpu_provider.multipart.windows import BandwidthTimetable, UploadWindow
from tests.conftest import incomplete_uploads, make_file, sha256_file, sha256_object
from tests.multipart.test_bandwidth import FakeClock

BUCKET = "test-bucket"
NIGHT = datetime(2026, 12, 7, 23, 0, tzinfo=UTC)
MORNING = datetime(2026, 12, 8, 6, 0, tzinfo=UTC)


class WallClock:
    """The schedule's clock: an aware datetime the test sets."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def engine_for(client, path, clock: WallClock, **options) -> tuple[FileUploadEngine, FileSource]:
    source = FileSource(path)
    engine = FileUploadEngine(
        client,
        bucket=BUCKET,
        key="obj",
        source=source,
        plan=plan_parts(source.size, 5 * MiB),
        options=UploadOptions(progress_interval=0, **options),
    )
    assert engine.schedule is not None
    engine.schedule.now = clock
    return engine, source


def test_the_window_closing_stops_new_parts_lets_the_one_in_flight_finish_and_keeps_the_upload(
    mock_s3, tmp_path, put_part_hooks
):
    path = make_file(tmp_path / "f", 30 * MiB + 7)  # 7 parts
    clock = WallClock(NIGHT)

    def close_during_part_3(number: int) -> None:
        if number == 3:
            clock.at = MORNING  # the window closes while part 3 is on its way

    put_part_hooks.before = close_during_part_3
    engine, source = engine_for(mock_s3, path, clock, upload_window="22:00-06:00", concurrency=1)
    with source, pytest.raises(UploadPaused) as paused:
        engine.run()
    outcome = paused.value
    uploads = incomplete_uploads(mock_s3, BUCKET)
    assert [u["UploadId"] for u in uploads] == [outcome.upload_id]  # kept, not aborted
    assert engine.kept_for_resume
    stored = mock_s3.list_parts(Bucket=BUCKET, Key="obj", UploadId=outcome.upload_id)["Parts"]
    assert [p["PartNumber"] for p in stored] == [1, 2, 3]  # part 3 was in flight: finished, not cut
    assert (outcome.stored_parts, outcome.stored_bytes, outcome.left_bytes) == (3, 15 * MiB, 15 * MiB + 7)
    assert outcome.sent_bytes == 15 * MiB
    assert outcome.rate and outcome.rate > 0
    assert outcome.resumes_at == datetime(2026, 12, 8, 22, 0, tzinfo=UTC)
    # 15 MiB at the measured rate, from the next opening on
    assert outcome.projected_finish is not None and outcome.projected_finish > outcome.resumes_at
    assert outcome.to_dict()["resumes_at"] == "2026-12-08T22:00:00+00:00"

    # The next night: resumed like a retry, only the missing parts sent.
    put_part_hooks.clear()
    clock.at = NIGHT + timedelta(days=1)
    engine, source = engine_for(mock_s3, path, clock, upload_window="22:00-06:00", concurrency=2)
    with source:
        result = engine.run(resume_upload_id=outcome.upload_id)
    assert (result.parts_resumed, result.parts_sent) == (3, 4)
    assert result.upload_id == outcome.upload_id
    assert sha256_object(mock_s3, BUCKET, "obj") == sha256_file(path)
    assert incomplete_uploads(mock_s3, BUCKET) == []


def test_outside_the_window_nothing_is_created(mock_s3, tmp_path):
    path = make_file(tmp_path / "f", 6 * MiB)
    engine, source = engine_for(mock_s3, path, WallClock(MORNING), upload_window="22:00-06:00")
    with source, pytest.raises(UploadPaused, match="Outside the upload window") as paused:
        engine.run()
    assert paused.value.stored_bytes is None
    assert paused.value.resumes_at == datetime(2026, 12, 8, 22, 0, tzinfo=UTC)
    assert incomplete_uploads(mock_s3, BUCKET) == []
    assert "Contents" not in mock_s3.list_objects_v2(Bucket=BUCKET)


def test_window_strings_and_timetable_dicts_in_options_are_parsed(mock_s3, tmp_path):
    path = make_file(tmp_path / "f", 1)
    engine, source = engine_for(
        mock_s3, path, WallClock(NIGHT), upload_window="22:00-06:00", max_bandwidth={"00:00": None, "08:00": MiB}
    )
    with source:
        assert isinstance(engine.schedule.window, UploadWindow)
        assert isinstance(engine.bandwidth, TimetableBandwidth)
        engine.run()  # in the window, uncapped: done
    assert sha256_object(mock_s3, BUCKET, "obj") == sha256_file(path)


def test_timetable_switches_the_cap_at_its_changes():
    wall = WallClock(datetime(2026, 12, 8, 7, 59, tzinfo=UTC))
    clock = FakeClock()
    timetable = BandwidthTimetable.parse({"08:00": MiB, "19:00": 4 * MiB, "23:00": None})
    limit = TimetableBandwidth(timetable, wall, logging.getLogger("t"), clock=clock, wait=clock.wait)
    assert limit.current is None
    limit.take(10**9)
    assert clock.now < 0.01  # uncapped: no wait for a gigabyte
    wall.at = datetime(2026, 12, 8, 8, 0, tzinfo=UTC)
    start = clock.now
    for _ in range(32):
        limit.take(32 * KiB)  # 1 MiB in socket-write pieces
    assert limit.rate == MiB and limit.current == MiB
    assert clock.now - start == pytest.approx(1.0, abs=0.01)
    wall.at = datetime(2026, 12, 8, 19, 30, tzinfo=UTC)
    start = clock.now
    for _ in range(128):
        limit.take(32 * KiB)  # 4 MiB
    assert limit.rate == 4 * MiB
    assert clock.now - start == pytest.approx(1.0, abs=0.01)  # four times the bytes in the same second
    wall.at = datetime(2026, 12, 8, 23, 0, tzinfo=UTC)
    start = clock.now
    limit.take(10**9)
    assert limit.current is None and clock.now - start < 0.01  # uncapped again


def test_deadline_warns_early_once_and_again_only_after_recovering(caplog):
    wall = WallClock(NIGHT)
    schedule = UploadSchedule(
        window=UploadWindow.parse("22:00-06:00"),
        timetable=BandwidthTimetable.parse({"00:00": MiB}),
        finish_by=MORNING,
        now=wall,
    )
    heard = []
    schedule.on_deadline = lambda on_time, projected: heard.append(on_time)
    with caplog.at_level(logging.INFO):
        schedule.begin(8 * 3600 * MiB, workers=4)  # 8 h at the 1 MiB/s cap, 7 h of window left: cannot
        schedule.check_deadline()
        assert heard == [False]
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "cannot finish by finish_by 2026-12-08T06:00+00:00" in warnings[0].getMessage()
        assert "projected to finish at 2026-12-08T23:00" in warnings[0].getMessage()  # 1 h into the next night
        schedule._left = 3600 * MiB  # most of it went (a resumed upload, say): on time again
        schedule.check_deadline()
        schedule._left = 8 * 3600 * MiB
        schedule.check_deadline()
    assert heard == [False, True, False]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_no_schedule_without_window_timetable_or_deadline():
    assert UploadSchedule.for_options(UploadOptions(max_bandwidth=MiB)) is None
