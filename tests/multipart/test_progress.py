from __future__ import annotations

import logging

from airflow_mpu_provider.multipart.plan import MiB
from airflow_mpu_provider.multipart.progress import ProgressReporter, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_logs_at_most_once_per_interval_with_percent_rate_and_eta(caplog):
    clock = FakeClock()
    log = logging.getLogger("test.progress")
    progress = ProgressReporter(total_bytes=100 * MiB, total_parts=100, log=log, interval=30, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.progress"):
        for second in range(1, 61):
            clock.now = float(second)
            progress.advance(1 * MiB)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # at t=30 and t=60, not 60 lines
    assert lines[0] == "30.0 MiB of 100.0 MiB (30.0%), part 30/100, 1.0 MB/s, ETA 1m10s"


def test_resumed_bytes_count_for_percent_but_not_for_rate():
    clock = FakeClock()
    progress = ProgressReporter(
        total_bytes=100 * MiB, total_parts=10, log=logging.getLogger("x"), interval=1000, clock=clock
    )
    progress.skip(50 * MiB, 5)
    clock.now = 10.0
    progress.advance(10 * MiB)
    assert progress.done_bytes == 60 * MiB
    assert progress.rate() == 10 * MiB / 10
    assert "(60.0%)" in progress.summary()


def test_format_duration():
    assert format_duration(5) == "5s"
    assert format_duration(125) == "2m05s"
    assert format_duration(3 * 3600 + 61) == "3h01m01s"
