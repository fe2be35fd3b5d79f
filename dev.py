#!/usr/bin/env python3
"""One entry point for a fresh machine that has only python3 and pip.

    python3 dev.py demo   # set up .venv, run the example nightly-dump DAG against an embedded S3
    python3 dev.py test   # set up, run ruff and the whole test suite on the newest and the oldest
                          # supported Airflow and at the declared dependency floors, each from its
                          # own locked environment

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
#: Where `test` runs without the end-to-end DAG runs (tests/e2e, about 4.5 of the 7 minutes a full
#: environment takes on 2 cores): Airflow 3.1 is run end to end in "floors" (3.1.3) already, and three
#: full environments would take CI near its 30-minute budget. `--env oldest` alone still runs them all.
WITHOUT_E2E_IN_FULL_RUN = {"oldest"}
#: The tests against OpenStack Swift (tests/swift and its DAG run, about 1.5 minutes) run in the newest
#: environment only in a full run: what they test is the store's S3 dialect, not the Airflow version, and
#: CI's time is budgeted. `--env NAME` alone runs them anywhere.
SWIFT_TESTS = ["tests/swift", "tests/e2e/test_swift_dag.py"]
SWIFT_ONLY_IN_FULL_RUN = {"newest"}


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


def test(args: list[str]) -> int:
    names = list(ENVIRONMENTS)
    if args[:1] == ["--env"] and len(args) > 1:
        names, args = [args[1]], args[2:]
    ensure_swift()
    failed = []
    for name in names:
        python = setup(name)
        if name == names[0]:
            run(bin_dir(python.parent.parent) / "ruff", "check", ".")
        version = subprocess.run(
            [str(python), "-c", "import airflow; print(airflow.__version__)"], capture_output=True, text=True
        ).stdout.strip()
        skip_e2e = len(names) > 1 and name in WITHOUT_E2E_IN_FULL_RUN
        print(f"\n=== tests on Airflow {version} ({name}{', without tests/e2e' if skip_e2e else ''}) ===", flush=True)
        extra = ["--ignore=tests/e2e"] if skip_e2e else []
        if len(names) > 1 and name not in SWIFT_ONLY_IN_FULL_RUN:
            extra += [f"--ignore={path}" for path in SWIFT_TESTS]
        if subprocess.call([str(python), "-m", "pytest", *extra, *args], cwd=ROOT) != 0:
            failed.append(f"{name} (Airflow {version})")
    if failed:
        print(f"\nFAILED on: {', '.join(failed)}")
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
