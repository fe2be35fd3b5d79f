#!/usr/bin/env python3
"""One entry point for a fresh machine that has only python3 and pip.

    python3 dev.py demo   # set up .venv, run the example nightly-dump DAG against an embedded S3
    python3 dev.py test   # set up .venv, run ruff and the whole test suite

Set-up is idempotent: the virtualenv is (re)installed from constraints.txt only when
constraints.txt or pyproject.toml changed since the last install.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("MPU_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"


def run(*cmd: str | os.PathLike[str], **kwargs) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kwargs)


def setup() -> None:
    """Create .venv and install the pinned dependencies plus this package (editable)."""
    fingerprint = hashlib.sha256(
        b"".join((ROOT / name).read_bytes() for name in ("constraints.txt", "pyproject.toml"))
    ).hexdigest()
    stamp = VENV / ".mpu-installed"
    if stamp.exists() and stamp.read_text() == fingerprint and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"Creating virtualenv {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CONSTRAINT": str(ROOT / "constraints.txt")}
    run(PYTHON, "-m", "pip", "install", "--quiet", "pip==26.3", env=env)
    run(PYTHON, "-m", "pip", "install", "--quiet", "-c", "constraints.txt", "-e", ".[test]", env=env)
    stamp.write_text(fingerprint)


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "help"
    if command not in ("demo", "test", "setup"):
        print(__doc__)
        return 2
    setup()
    if command == "demo":
        return subprocess.call([str(PYTHON), str(ROOT / "example_dags" / "run_demo.py"), *argv[2:]], cwd=ROOT)
    if command == "test":
        run(BIN / "ruff", "check", ".")
        return subprocess.call([str(PYTHON), "-m", "pytest", *argv[2:]], cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
