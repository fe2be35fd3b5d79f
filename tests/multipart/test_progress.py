from __future__ import annotations

import logging
import threading

import pytest

from airflow_mpu_provider.multipart.progress import MIN_TIMER_INTERVAL, ProgressReporter, Ticker
from airflow_mpu_provider.multipart.units import MiB


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
    assert lines[0] == "30.0 MiB of 100.0 MiB (30.0%), 30/100 parts done, 1.0 MiB/s, ETA 1m10s"


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


# -- lines on a timer -------------------------------------------------------------------------------


class SteppedTicker(Ticker):
    """A timer that sleeps only when the test says so: each ``step()`` ends one ``wait``, moving the fake
    clock to the moment that wait was to end, and returns once the timer is waiting again (so the line
    of that wake, if any, has been written)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.waits: list[float] = []
        self._cond = threading.Condition()
        self._steps = 0
        self._waiting = False

    def wait(self, seconds: float) -> bool:
        with self._cond:
            self.waits.append(seconds)
            wakes_at = self.clock.now + seconds
            self._waiting = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._steps or self._stopped.is_set())
            self._waiting = False
            if self._stopped.is_set():
                return True
            self._steps -= 1
            self.clock.now = max(self.clock.now, wakes_at)
            return False

    def stop(self) -> None:
        with self._cond:
            super().stop()
            self._cond.notify_all()

    def wait_until_waiting(self) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self._waiting, timeout=30), "the timer thread never waited"

    def step(self) -> None:
        self.wait_until_waiting()
        with self._cond:
            self._steps += 1
            self._cond.notify_all()
            assert self._cond.wait_for(lambda: self._waiting and not self._steps, timeout=30), "no wake"


def stepped_reporter(total_bytes=100 * MiB, total_parts=100, interval=30.0):
    clock = FakeClock()
    tickers: list[SteppedTicker] = []

    def factory() -> SteppedTicker:
        tickers.append(SteppedTicker(clock))
        return tickers[-1]

    log = logging.getLogger("test.progress.timer")
    progress = ProgressReporter(
        total_bytes=total_bytes,
        total_parts=total_parts,
        log=log,
        interval=interval,
        clock=clock,
        ticker_factory=factory,
    )
    return progress, clock, tickers


def progress_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mpu-progress"]


def test_timer_writes_a_line_every_interval_and_says_how_long_no_part_finished(caplog):
    progress, clock, tickers = stepped_reporter()
    with caplog.at_level(logging.INFO, logger="test.progress.timer"), progress.ticking():
        (ticker,) = tickers
        ticker.wait_until_waiting()  # asleep since t=0, until t=30
        clock.now = 5.0
        progress.advance(10 * MiB)  # not due yet: no line
        assert caplog.records == []
        ticker.step()  # t=30: due; the last part finished 25 s ago, less than an interval
        ticker.step()  # t=60: nothing finished for 55 s
        ticker.step()  # t=90
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "10.0 MiB of 100.0 MiB (10.0%), 1/100 parts done, 341.3 KiB/s, ETA 4m30s",
        "10.0 MiB of 100.0 MiB (10.0%), 1/100 parts done, 170.7 KiB/s, ETA 9m00s, nothing sent for 55s",
        "10.0 MiB of 100.0 MiB (10.0%), 1/100 parts done, 113.8 KiB/s, ETA 13m30s, nothing sent for 1m25s",
    ]
    assert ticker.waits[:3] == [30.0, 30.0, 30.0]
    assert progress_threads() == []  # stopped and joined when the block ended


def test_tick_says_how_long_until_the_next_line_is_due(caplog):
    """The timer sleeps until the next line is due, not a whole interval from its own last wake: a line
    written meanwhile by a finishing part moves it, so lines stay one interval apart."""
    progress, clock, _ = stepped_reporter()
    with caplog.at_level(logging.INFO, logger="test.progress.timer"):
        clock.now = 10.0
        assert progress.tick() == 20.0  # not due: no line
        clock.now = 31.0
        assert progress.tick() == 30.0  # due: a line, the next one in an interval
        clock.now = 61.5
        progress.advance(1 * MiB)  # a part finished after the line fell due: the part writes it
        clock.now = 70.0
        assert progress.tick() == 21.5
    assert len(caplog.records) == 2


def test_timer_line_for_a_stream_has_no_total_and_still_shows_the_stall(caplog):
    progress, clock, tickers = stepped_reporter(total_bytes=None, total_parts=None, interval=10)
    with caplog.at_level(logging.INFO, logger="test.progress.timer"), progress.ticking():
        tickers[0].wait_until_waiting()
        clock.now = 1.0
        progress.advance(5 * MiB)
        tickers[0].step()  # t=10: nothing for 9 s, less than an interval
        tickers[0].step()  # t=20: nothing for 19 s
    assert [r.getMessage() for r in caplog.records] == [
        "5.0 MiB so far, 1 part done, 512.0 KiB/s",
        "5.0 MiB so far, 1 part done, 256.0 KiB/s, nothing sent for 19s",
    ]


def test_timer_never_spins_with_interval_zero():
    progress, _clock, tickers = stepped_reporter(interval=0)
    with progress.ticking():
        tickers[0].step()
        tickers[0].step()
    assert tickers[0].waits and min(tickers[0].waits) >= MIN_TIMER_INTERVAL


def test_timer_thread_is_joined_when_the_upload_fails():
    progress, _clock, tickers = stepped_reporter()
    with pytest.raises(RuntimeError, match="part failed"), progress.ticking():
        tickers[0].step()
        raise RuntimeError("part failed")
    assert progress_threads() == []


# -- the engines keep the timer running while parts are on their way -------------------------------------


class StallLineSeen(logging.Handler):
    """Sets ``seen`` when a progress line reports a stall: what releases the stalled part."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen = threading.Event()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        if "nothing sent for" in record.getMessage():
            self.seen.set()


class StallingClient:
    """An S3 client whose UploadPart of part 2 hangs until ``release`` is set (a stalled connection)."""

    def __init__(self, client, release: threading.Event) -> None:
        self._client = client
        self._release = release

    def __getattr__(self, name):
        return getattr(self._client, name)

    def upload_part(self, **kwargs):
        if kwargs["PartNumber"] == 2:
            assert self._release.wait(60), "no stall line was logged while the part hung"
        return self._client.upload_part(**kwargs)


def logger_with(handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(f"test.progress.engine.{id(handler)}")
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    return log


def test_file_upload_logs_a_stall_while_a_part_hangs_and_stops_its_timer(mock_s3, tmp_path):
    from airflow_mpu_provider.multipart.file_engine import FileUploadEngine
    from airflow_mpu_provider.multipart.options import UploadOptions
    from airflow_mpu_provider.multipart.parts.plan import plan_parts
    from airflow_mpu_provider.multipart.sources.file import FileSource
    from tests.conftest import make_file, sha256_file, sha256_object

    path = make_file(tmp_path / "f", 6 * MiB)
    seen = StallLineSeen()
    with FileSource(path) as source:
        engine = FileUploadEngine(
            StallingClient(mock_s3, seen.seen),
            bucket="test-bucket",
            key="stalled",
            source=source,
            plan=plan_parts(source.size, 5 * MiB),
            options=UploadOptions(concurrency=1, progress_interval=1),
            log=logger_with(seen),
        )
        result = engine.run()
    # The part was released only by the timer's line: without it the upload could not have finished.
    assert seen.seen.is_set()
    assert any("1/2 parts done" in line and "nothing sent for" in line for line in seen.lines), seen.lines
    assert result.parts_sent == 2
    assert sha256_object(mock_s3, "test-bucket", "stalled") == sha256_file(path)
    assert progress_threads() == []


def test_stream_upload_logs_a_stall_while_the_command_is_silent(mock_s3):
    from airflow_mpu_provider.multipart.options import UploadOptions
    from airflow_mpu_provider.multipart.stream_engine import StreamUploadEngine

    seen = StallLineSeen()

    class SilentAfterOnePart:
        description = "a command that goes quiet"

        def __init__(self) -> None:
            self.reads = 0

        def read(self, size: int) -> bytes:
            self.reads += 1
            if self.reads == 1:
                return b"a" * size
            assert seen.seen.wait(60), "no stall line was logged while the stream was silent"
            return b"tail" if self.reads == 2 else b""

        def finish(self) -> None:
            pass

    engine = StreamUploadEngine(
        mock_s3,
        bucket="test-bucket",
        key="silent-stream",
        stream=SilentAfterOnePart(),
        first_part_size=5 * MiB,
        options=UploadOptions(concurrency=1, progress_interval=1),
        log=logger_with(seen),
    )
    result = engine.run()
    assert any("so far, 1 part done," in line and "nothing sent for" in line for line in seen.lines), seen.lines
    assert result.size == 5 * MiB + 4
    assert progress_threads() == []


def test_timer_stops_when_a_part_fails(mock_s3, tmp_path):
    from airflow_mpu_provider.multipart.file_engine import FileUploadEngine
    from airflow_mpu_provider.multipart.options import UploadOptions
    from airflow_mpu_provider.multipart.parts.plan import plan_parts
    from airflow_mpu_provider.multipart.sources.file import FileSource
    from tests.conftest import incomplete_uploads, make_file

    class FailingClient(StallingClient):
        def upload_part(self, **kwargs):
            if kwargs["PartNumber"] == 2:
                raise ConnectionError("the network went away")
            return self._client.upload_part(**kwargs)

    path = make_file(tmp_path / "f", 6 * MiB)
    with FileSource(path) as source:
        engine = FileUploadEngine(
            FailingClient(mock_s3, threading.Event()),
            bucket="test-bucket",
            key="fails",
            source=source,
            plan=plan_parts(source.size, 5 * MiB),
            options=UploadOptions(concurrency=1, progress_interval=1),
        )
        with pytest.raises(ConnectionError):
            engine.run()
    assert progress_threads() == []
    assert incomplete_uploads(mock_s3, "test-bucket", "fails") == []


def test_bytes_count_as_they_go_out_and_resent_bytes_are_said_not_counted_twice(caplog):
    """Issue #20: a part's body reports its reads; a retry's re-sent bytes go into the rate, not the percentage."""
    clock = FakeClock()
    log = logging.getLogger("test.progress.bytes")
    progress = ProgressReporter(total_bytes=10 * MiB, total_parts=1, log=log, interval=30, clock=clock)
    meter = progress.part_meter()
    meter.sent(4 * MiB, 0)
    meter.sent(0, 4 * MiB)  # botocore rewound the body and sent the first 4 MiB again
    meter.sent(6 * MiB, 0)
    clock.now = 10.0
    assert progress.done_bytes == 10 * MiB and progress.sent_bytes == 14 * MiB
    progress.advance(10 * MiB, meter)  # the part's end adds nothing its body already reported
    assert (progress.done_bytes, progress.done_parts) == (10 * MiB, 1)
    assert (
        progress.summary()
        == "10.0 MiB of 10.0 MiB (100.0%), 1/1 parts done, 1.4 MiB/s, ETA 0s, 4.0 MiB resent, 10s elapsed"
    )
