#!/usr/bin/env python3
"""One entry point for a fresh machine that has only python3 and pip.

    python3 dev.py demo   # set up .venv, run the example nightly-dump DAG against an embedded S3
    python3 dev.py test   # set up, run ruff and the test suite on the newest and the oldest
                          # supported Airflow and at the declared dependency floors, each from its
                          # own locked environment (each runs what differs there: FULL_RUN_SELECTION)

    python3 dev.py test --env newest -k resume    # one environment; the rest goes to pytest

Set-up is idempotent: an environment is (re)installed from its constraints file only when that file
or pyproject.toml changed since its last install.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent

#: name -> (virtualenv folder, constraints file): the newest Airflow we support with today's dependencies;
#: the oldest Airflow with today's dependencies; and every declared floor of pyproject.toml at once.
ENVIRONMENTS = {
    "newest": (ROOT / ".venv", ROOT / "constraints.txt"),
    "oldest": (ROOT / ".venv-airflow-3.1", ROOT / "constraints-airflow-3.1.txt"),
    "floors": (ROOT / ".venv-floors", ROOT / "constraints-floors.txt"),
}
#: What each environment runs in a full run (`python3 dev.py test`), as pytest arguments: each proves only
#: what differs there, so that CI stays well under 30 minutes on 2 cores (one after the other they took
#: 14.6 + 5.4 + 10.7 minutes, 35 with set-up; see JOBS for how they run now). `--env NAME` alone runs
#: everything in NAME.
#:
#: * newest (Airflow 3.3.2, today's dependencies): the whole suite, the Swift tests included.
#: * oldest (Airflow 3.1.8 with today's dependencies): its constraints differ from the newest's only in
#:   Airflow and Airflow's own dependencies (the same boto3, botocore, s3transfer, awscrt and moto), so it
#:   runs what goes through Airflow: the hook, the operators and the integration tests of the operator over
#:   HTTP. Not the engine's unit tests (tests/multipart: the engine imports nothing of Airflow), its
#:   integration tests (ENGINE_OVER_HTTP) nor the proxy's own tests, which would only repeat the newest's
#:   run with the same boto3, botocore and moto; not the DAG runs, which Airflow 3.1 gets at the floors.
#: * floors (Airflow 3.1.3 and every declared floor: botocore 1.36.0, amazon provider 9.4.0, ...): all but
#:   the Swift tests and the e2e tests marked ``airflow_independent`` (the engine through one DAG run: the
#:   1 GiB upload, the streamed command, a file changed mid-upload, another file under the same key),
#:   whose engine paths the floors' unit and integration tests already cover on botocore's floor. What
#:   differs between Airflow versions, the glue (no task_state_store before 3.3, reschedules, XCom, kills,
#:   timeouts, mapping, TaskFlow, metrics, the example DAGs), runs end to end here.
#: The Swift tests (tests/swift and its DAG run, about 1.5 minutes) test the store's S3 dialect, not the
#: Airflow version: the newest environment runs them.
SWIFT_TESTS = ["tests/swift", "tests/e2e/test_swift_dag.py"]
#: Integration tests of the engine's own behaviour over HTTP (rates, timetables, outages, parallelism,
#: what the store answers), which never ask the Airflow version: the glue they pass through (the
#: operator, the connection) is what the other integration tests and tests/operators run in "oldest".
ENGINE_OVER_HTTP = [
    "adaptive_parallelism",
    "bandwidth",
    "checksum_echo",
    "error_hints",
    "faults",
    "keys_over_http",
    "payload_signing",
    "progress_bytes",
    "store_answers",
    "timetable",
]
FULL_RUN_SELECTION: dict[str, list[str]] = {
    "newest": [],
    "oldest": [
        "--ignore=tests/e2e",
        "--ignore=tests/multipart",
        "--ignore=tests/support/test_s3_proxy.py",
        *(f"--ignore=tests/integration/test_{name}.py" for name in ENGINE_OVER_HTTP),
        *(f"--ignore={path}" for path in SWIFT_TESTS),
    ],
    "floors": ["-m", "not (e2e and airflow_independent)", *(f"--ignore={path}" for path in SWIFT_TESTS)],
}


def run(*cmd: str | os.PathLike[str], **kwargs) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kwargs)


def bin_dir(env_dir: Path) -> Path:
    return env_dir / ("Scripts" if os.name == "nt" else "bin")


def setup(name: str) -> Path:
    """Create the environment and install its pinned dependencies plus this package (editable)."""
    env_dir, constraints = ENVIRONMENTS[name]
    python = bin_dir(env_dir) / "python"
    fingerprint = hashlib.sha256(constraints.read_bytes() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamp = env_dir / ".mpu-installed"
    if stamp.exists() and stamp.read_text() == fingerprint and python.exists():
        return python
    if not python.exists():
        print(f"Creating virtualenv {env_dir}", flush=True)
        venv.EnvBuilder(with_pip=True).create(env_dir)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CONSTRAINT": str(constraints)}
    run(python, "-m", "pip", "install", "-qq", "pip==26.3", env=env)
    run(python, "-m", "pip", "install", "-qq", "-c", constraints, "-e", ".[test]", env=env)
    stamp.write_text(fingerprint)
    return python


def ensure_swift() -> None:
    """Install the OpenStack Swift the tests run as a second real S3 store (tests/support/swift_server.py),
    when it is missing and this is a Debian/Ubuntu machine where we are root (as in CI); otherwise say
    that its tests will be skipped (under CI=true they fail instead: CI must run them)."""
    from tests.support.swift_server import PACKAGES, missing_message, missing_programs

    missing = missing_programs()
    if not missing:
        return
    can_install = os.name == "posix" and os.geteuid() == 0 and shutil.which("apt-get") is not None
    if can_install:
        print(f"Installing OpenStack Swift for its tests: {' '.join(PACKAGES)}", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        apt = ["apt-get", "-q", "-o", "Dpkg::Use-Pty=0"]
        if subprocess.call([*apt, "update"], env=env) == 0:
            subprocess.call([*apt, "install", "-y", "--no-install-recommends", *PACKAGES], env=env)
        missing = missing_programs()
        if not missing:
            return
    print(f"NOTE: {missing_message(missing)}. The Swift tests will be skipped (they fail under CI=true).", flush=True)


#: A full run without pytest arguments runs each environment's selection as these jobs, two at a time (CI
#: has 2 cores): the suite waits far more than it computes (parts slowed by the fault proxy, timeouts,
#: upload windows, Airflow's executor and API server idling), about half a core per pytest on average, so
#: two sessions side by side take little longer than the longer one alone. Each job is its own pytest
#: session (its own moto server, Airflow home and temporary directories); the e2e DAG runs are split from
#: the rest so that the two halves of an environment overlap. The figure is each job's duration measured
#: two at a time on 2 cores shared with other work (minutes; under more load, 13.1, 15.4, 9.1, 4.8, 3.7),
#: for the order: the longest first, so the last to start are the short ones.
JOBS: list[tuple[str, list[str], float]] = [
    ("newest", ["tests/e2e"], 10.8),
    ("newest", ["tests", "--ignore=tests/e2e"], 10.0),
    ("floors", ["tests", "--ignore=tests/e2e", "--ignore=tests/swift"], 9.0),
    ("floors", ["tests/e2e", "--ignore=tests/e2e/test_swift_dag.py", "-m", "not airflow_independent"], 5.0),
    ("oldest", ["tests", *FULL_RUN_SELECTION["oldest"]], 4.0),
]


def airflow_version(python: Path) -> str:
    return subprocess.run(
        [str(python), "-c", "import airflow; print(airflow.__version__)"], capture_output=True, text=True
    ).stdout.strip()


def test(args: list[str]) -> int:
    names = list(ENVIRONMENTS)
    if args[:1] == ["--env"] and len(args) > 1:
        names, args = [args[1]], args[2:]
    ensure_swift()
    if len(names) > 1 and not args:
        return run_jobs()
    pythons = {name: setup(name) for name in names}
    run(bin_dir(pythons[names[0]].parent.parent) / "ruff", "check", ".")
    versions = {name: airflow_version(python) for name, python in pythons.items()}
    failed = []
    for name in names:
        extra = FULL_RUN_SELECTION[name] if len(names) > 1 else []
        selection = f": {' '.join(extra)}" if extra else ""
        print(f"\n=== tests on Airflow {versions[name]} ({name}{selection}) ===", flush=True)
        if subprocess.call([str(pythons[name]), "-m", "pytest", *extra, *args], cwd=ROOT) != 0:
            failed.append(f"{name} (Airflow {versions[name]})")
    if failed:
        print(f"\nFAILED on: {', '.join(failed)}")
        return 1
    return 0


def run_jobs(pythons: dict[str, Path] | None = None, versions: dict[str, str] | None = None) -> int:
    """Run :data:`JOBS`, two at a time (CI's 2 cores; one on a 1-core machine); each job's output is
    printed whole when it ends, under a header naming it. Without ``pythons``, the environments are set
    up one after the other in a thread while the newest one's jobs already run (a fresh CI clone creates
    all three: pip's minutes overlap the tests instead of coming before them)."""
    import tempfile
    import threading
    import time

    pythons = dict(pythons or {})
    versions = dict(versions or {})
    setup_failed: list[str] = []

    def set_up_all() -> None:
        for name in ENVIRONMENTS:
            if name in pythons:
                continue
            try:
                python = setup(name)
                versions[name] = airflow_version(python)
            except (OSError, subprocess.CalledProcessError) as exc:  # pip's own output says more
                setup_failed.append(f"{name}: {exc}")
                return
            if name == "newest":
                try:
                    run(bin_dir(python.parent.parent) / "ruff", "check", ".")
                except subprocess.CalledProcessError:
                    setup_failed.append("ruff check")
                    return
            pythons[name] = python

    installer = threading.Thread(target=set_up_all, name="set-up")
    installer.start()
    slots = max(1, min(2, os.cpu_count() or 1))
    waiting = sorted(JOBS, key=lambda job: -job[2])
    running: list[tuple[str, list[str], subprocess.Popen, Path, float]] = []
    failed = []
    logs = Path(tempfile.mkdtemp(prefix="mpu-dev-test-"))
    started = time.monotonic()
    while running or (waiting and installer.is_alive()) or any(job[0] in pythons for job in waiting):
        while not setup_failed and len(running) < slots and (ready := [job for job in waiting if job[0] in pythons]):
            waiting.remove(ready[0])
            name, job_args, _ = ready[0]
            log = logs / f"{len(waiting)}-{name}.log"
            print(f"+ [{name}] pytest {' '.join(job_args)}", flush=True)
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    [str(pythons[name]), "-m", "pytest", "--durations=15", *job_args],
                    cwd=ROOT,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            running.append((name, job_args, process, log, time.monotonic()))
        for job in list(running):
            name, job_args, process, log, job_started = job
            if process.poll() is None:
                continue
            running.remove(job)
            took = (time.monotonic() - job_started) / 60
            title = f"tests on Airflow {versions[name]} ({name}: pytest {' '.join(job_args)}), {took:.1f} min"
            print(f"\n=== {title} ===", flush=True)
            sys.stdout.write(log.read_text(errors="replace"))
            if process.returncode != 0:
                failed.append(title)
        time.sleep(1)  # a poll of the jobs and the set-up, not a wait for any of them
        if setup_failed and not running:
            break
    installer.join()
    if setup_failed or waiting:
        failed.append(f"set-up failed ({'; '.join(setup_failed) or 'see above'}): not run: {len(waiting)} jobs")
    print(f"\nAll jobs took {(time.monotonic() - started) / 60:.1f} min; logs in {logs}", flush=True)
    if failed:
        print("\nFAILED:\n  " + "\n  ".join(failed))
        return 1
    return 0


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "help"
    if command == "demo":
        python = setup("newest")
        return subprocess.call([str(python), str(ROOT / "example_dags" / "run_demo.py"), *argv[2:]], cwd=ROOT)
    if command == "test":
        return test(argv[2:])
    if command == "setup":
        for name in ENVIRONMENTS:
            setup(name)
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
