"""Metrics as a deployment sees them: Airflow's StatsD settings on, a real StatsD listener on loopback,
and the task run by the executor in its own process (where the task runner configures ``Stats``)."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest

# Airflow's StatsD logger needs the ``statsd`` package (the ``test`` extra installs it). Imported here so
# that an environment without it fails loudly instead of sending the metrics nowhere.
import statsd as statsd_package  # noqa: F401

from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.e2e.conftest import BUCKET
from tests.support.seed import seed_crashed_upload

pytestmark = pytest.mark.e2e


METRIC = re.compile(r"^(?P<name>[^:]+):(?P<value>[-0-9.]+)\|(?P<kind>c|g|ms)(\|@[0-9.]+)?$")


class StatsdListener:
    """A StatsD server in a thread on 127.0.0.1: every metric line received, parsed."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)  # how often the thread looks at the stop flag, not a wait for data
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="statsd-listener")

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            self.lines.extend(line for line in data.decode().splitlines() if line)

    def metrics(self, prefix: str) -> list[tuple[str, float, str]]:
        found = []
        for line in list(self.lines):
            m = METRIC.match(line)
            if m and m["name"].startswith(prefix):
                found.append((m["name"], float(m["value"]), m["kind"]))
        return found

    def wait_for(self, name: str, timeout: float = 30) -> bool:
        """Whether ``name`` arrived (UDP on loopback: it is there once the run ended, but poll anyway)."""
        deadline = time.monotonic() + timeout
        while not any(n == name for n, _, _ in self.metrics(name)):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def settings(self) -> dict[str, str]:
        return {
            "AIRFLOW__METRICS__STATSD_ON": "True",
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(self.port),
            "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        }

    def __enter__(self) -> StatsdListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def statsd_listener() -> Iterator[StatsdListener]:
    with StatsdListener() as listener:
        yield listener


def by_name(metrics: list[tuple[str, float, str]]) -> dict[str, list[tuple[float, str]]]:
    out: dict[str, list[tuple[float, str]]] = {}
    for name, value, kind in metrics:
        out.setdefault(name, []).append((value, kind))
    return out


def test_resumed_upload_sends_its_figures_under_the_mpu_prefix(run_dag, s3, tmp_path, statsd_listener):
    """A crashed earlier upload holds parts 1-3; the task resumes it and sends parts 4-6."""
    path = make_file(tmp_path / "dump.sql", 30 * MiB)
    key = "e2e/metrics.bin"
    seed_crashed_upload(s3, BUCKET, key, path.read_bytes(), (1, 2, 3))

    result = run_dag(
        use_executor=True, file=path, key=f"s3://{BUCKET}/{key}", adopt_quiet_after=0, **statsd_listener.settings()
    )
    assert result.task_succeeded, result.text[-5000:]
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert statsd_listener.wait_for("airflow.mpu.throughput"), statsd_listener.lines[-50:]

    got = by_name(statsd_listener.metrics("airflow.mpu."))
    assert got["airflow.mpu.uploads"] == [(1, "c")]
    assert got["airflow.mpu.bytes_sent"] == [(15 * MiB, "c")]
    assert got["airflow.mpu.bytes_resumed"] == [(15 * MiB, "c")]
    assert got["airflow.mpu.parts_sent"] == [(3, "c")]
    [(duration_ms, kind)] = got["airflow.mpu.duration"]
    assert kind == "ms" and duration_ms > 0
    [(throughput, kind)] = got["airflow.mpu.throughput"]
    assert kind == "g"
    assert abs(throughput - 15 * MiB / (duration_ms / 1000)) <= 1  # bytes per second of this try
    assert "airflow.mpu.aborts" not in got
    s3.delete_object(Bucket=BUCKET, Key=key)


def test_aborted_upload_counts_an_abort_and_no_upload(run_dag, s3, statsd_listener):
    key = "e2e/metrics-aborted.bin"
    command = "head -c 12000000 /dev/zero; echo 'dump failed' >&2; exit 3"
    result = run_dag(
        use_executor=True, command=command, key=f"s3://{BUCKET}/{key}", retries=0, **statsd_listener.settings()
    )
    assert not result.succeeded
    assert statsd_listener.wait_for("airflow.mpu.aborts"), statsd_listener.lines[-50:]
    got = by_name(statsd_listener.metrics("airflow.mpu."))
    assert got["airflow.mpu.aborts"] == [(1, "c")]
    assert "airflow.mpu.uploads" not in got and "airflow.mpu.bytes_sent" not in got
    assert incomplete_uploads(s3, BUCKET, key) == []
