"""End-to-end harness: real DAG runs through Airflow against moto's S3 server over HTTP.

One SQLite metadata DB under a temporary AIRFLOW_HOME is migrated once per session. The S3 server
runs in its own process; every test talks to it through a fault-injecting, request-counting proxy
(``tests/support/s3_proxy.py``), so what was sent is measured on the server side of the wire.

Runs that need a task process of their own (kill tests) use ``airflow dags test --use-executor``
with the LocalExecutor and an execution API server on loopback: the task runs under Airflow's
supervisor exactly as in production, so SIGTERM reaches ``on_kill`` and SIGKILL leads to a retry.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.support.local_airflow import (
    airflow_cli,
    airflow_environment,
    free_port,
    s3_client,
    wait_for_port,
)

BUCKET = "e2e-bucket"
DAGS = Path(__file__).parent / "dags"
AIRFLOW = Path(sys.executable).with_name("airflow")


def pytest_collection_modifyitems(config, items) -> None:
    """Every test under tests/e2e is an ``e2e`` test (dev.py selects by the marker), marked or not."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def e2e_bucket(moto_endpoint) -> str:
    s3_client(moto_endpoint).create_bucket(Bucket=BUCKET)
    return BUCKET


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("airflow_home")
    env = airflow_environment(home, endpoint="http://127.0.0.1:9", dags_folder=DAGS)
    airflow_cli(env, "db", "migrate")
    return home


@pytest.fixture(scope="session")
def execution_api(airflow_home) -> Iterator[dict[str, str]]:
    """An execution API server on loopback, for ``--use-executor`` runs; yields the settings workers need."""
    port = free_port()
    settings = {
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__CORE__PARALLELISM": "4",
    }
    env = airflow_environment(airflow_home, endpoint="http://127.0.0.1:9", dags_folder=DAGS, **settings)
    with (airflow_home / "api-server.log").open("w") as log:
        server = subprocess.Popen(
            [str(AIRFLOW), "api-server", "--apps", "execution", "-H", "127.0.0.1", "-p", str(port), "-w", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            wait_for_port(port, server, timeout=120, what="execution API server")
        except RuntimeError:
            raise RuntimeError((airflow_home / "api-server.log").read_text()[-3000:]) from None
        yield settings
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


@dataclass
class DagRunResult:
    returncode: int
    log: str
    logs_folder: Path

    @property
    def task_log(self) -> str:
        """The task logs as they are now (read afresh: the supervisor may still be flushing them)."""
        return _task_logs(self.logs_folder)

    @property
    def text(self) -> str:
        """Everything the run printed and logged (task logs go to files with --use-executor)."""
        return self.log + "\n" + self.task_log

    def shows(self, fragment: str, timeout: float = 30) -> bool:
        """Whether ``fragment`` is (or within ``timeout`` s appears) in the run's output or task logs."""
        deadline = time.monotonic() + timeout
        while fragment not in self.text:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0

    @property
    def task_succeeded(self) -> bool:
        """Whether the task's last try succeeded, for ``--use-executor`` runs: ``dags test`` sometimes lets
        the executor's "finished" event overtake the task's own state and marks a try failed although
        its supervisor reported success (seen on 3.1.3, 3.1.8 and 3.3.2 under load); the supervisor's
        ``final_state`` line is the try's real outcome."""
        return self.succeeded or self.shows("final_state=success")


def _task_logs(folder: Path) -> str:
    logs = sorted(folder.rglob("*.log"), key=lambda p: p.stat().st_mtime) if folder.exists() else []
    return "\n".join(p.read_text(errors="replace") for p in logs)


@pytest.fixture
def run_dag(airflow_home, proxy, tmp_path, request) -> Callable[..., DagRunResult]:
    """Run the ``mpu_e2e`` DAG once through Airflow; ``during(process)`` is polled while it runs."""

    def run(
        *,
        use_executor: bool = False,
        during: Callable[[psutil.Process], None] | None = None,
        dag_id: str = "mpu_e2e",
        dags_folder: Path = DAGS,
        timeout: float = 600,
        **settings: str,
    ) -> DagRunResult:
        extra = dict(request.getfixturevalue("execution_api")) if use_executor else {}
        for name, value in settings.items():
            extra[name if name.isupper() else f"MPU_E2E_{name.upper()}"] = str(value)
        env = airflow_environment(airflow_home, endpoint=proxy.url, dags_folder=dags_folder, **extra)
        # Each run gets its own logs folder so the task log read back is this run's only.
        logs = tmp_path / f"logs-{time.monotonic_ns()}"
        env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] = str(logs)
        cmd = [str(AIRFLOW), "dags", "test", dag_id, *(["--use-executor"] if use_executor else [])]
        out = tmp_path / f"dags-test-{time.monotonic_ns()}.out"
        with out.open("w") as sink:
            process = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        descendants: dict[int, psutil.Process] = {}
        shutdown = _ExecutorShutdown(out)
        returncode = None
        try:
            while process.poll() is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"dags test ran over {timeout} s:\n{out.read_text()[-5000:]}")
                descendants.update((p.pid, p) for p in _children(process.pid))
                if during is not None:
                    during(psutil.Process(process.pid))
                if use_executor and (returncode := shutdown.hung_with_result()) is not None:
                    break
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            _end_stragglers(process.pid, descendants)
        if returncode is None:
            returncode = process.returncode
        return DagRunResult(returncode, out.read_text(errors="replace"), logs)

    return run


class _ExecutorShutdown:
    """``dags test --use-executor`` sometimes never exits after its run finished: LocalExecutor.end()
    joins a worker that never takes its poison pill (seen on 3.3.2 under load: the run logged "DagRun
    Finished ... state=success", the task's supervisor "final_state=success", then the process waited
    for 10 minutes on an idle worker). The run's own outcome is already written by then; dags test exits
    1 exactly when that state is failed. So once the output shows the run finished and the executor
    shutting down, dags test gets :data:`GRACE` seconds to exit by itself (it takes about one normally)
    before the run is ended and the state it logged is its result."""

    GRACE = 60.0
    FINISHED = re.compile(r"DagRun Finished: .*?, state=(\w+)")

    def __init__(self, out: Path) -> None:
        self.out = out
        self.seen_at: float | None = None
        self.state: str | None = None
        self.next_look = 0.0

    def hung_with_result(self) -> int | None:
        """The exit status dags test would give, once it overstayed its shutdown; None until then."""
        now = time.monotonic()
        if self.seen_at is None:
            if now < self.next_look:
                return None
            self.next_look = now + 1.0  # the output may be megabytes: read it once a second
            text = self.out.read_text(errors="replace")
            finished = self.FINISHED.search(text)
            if finished is None or "Shutting down LocalExecutor" not in text[finished.start() :]:
                return None
            self.seen_at, self.state = now, finished.group(1)
        if now - self.seen_at < self.GRACE:
            return None
        print(f"dags test still running {self.GRACE:.0f} s after its run finished ({self.state}): ended")
        return 1 if self.state == "failed" else 0


def _end_stragglers(sid: int, seen: dict[int, psutil.Process], grace: float = 15.0) -> None:
    """Let what ``dags test`` (leader of session ``sid``) left behind end, then kill what is left.

    Executor workers end on their own once the run is over; stragglers (a retry the executor still runs
    after dags test gave up on the run) must not overlap the next run. Once dags test has exited its
    children are re-parented, so they are found by their session, by what was seen while it ran, and by
    their own children, rescanned until none is left: a worker may start a task's processes (which may
    leave the session) while it is being waited for, and killing the worker does not end them.
    """
    deadline = time.monotonic() + grace
    for _ in range(100):
        alive = _alive_tree(sid, seen)
        if not alive:
            return
        if time.monotonic() < deadline:
            psutil.wait_procs(alive, timeout=0.5)
            continue
        for straggler in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                straggler.kill()
        psutil.wait_procs(alive, timeout=5)
    raise RuntimeError(f"processes of the dags test run (session {sid}) would not end: {_alive_tree(sid, seen)}")


def _alive_tree(sid: int, seen: dict[int, psutil.Process]) -> list[psutil.Process]:
    """The run's processes still alive (zombies are dead): remembered, in the session, or their children."""
    seen.update((p.pid, p) for p in _in_session(sid))
    for process in list(seen.values()):
        with contextlib.suppress(psutil.Error):
            if process.is_running():  # the same process, not a later one that got its pid
                seen.update((p.pid, p) for p in process.children(recursive=True))
    alive = []
    for process in seen.values():
        with contextlib.suppress(psutil.Error):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
    return alive


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _in_session(sid: int) -> list[psutil.Process]:
    """Processes still in session ``sid`` (``dags test`` was started as its leader)."""
    found = []
    for candidate in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(candidate.pid) == sid:
                found.append(candidate)
    return found


def task_process(dags_test: psutil.Process) -> psutil.Process | None:
    """The process running the task itself: the supervisor's child titled 'airflow worker -- <ti id>'."""
    for child in dags_test.children(recursive=True):
        try:
            title = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if title.startswith("airflow worker -- ") and "LocalExecutor" not in title and not child.children():
            return child
    return None
