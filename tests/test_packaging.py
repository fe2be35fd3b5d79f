"""The package as a user gets it: build the wheel and the sdist, look inside, install the wheel, ask Airflow.

Built without network and without build isolation, with the setuptools of the test environment (the
``test`` extra requires setuptools >= 77, the same floor as ``[build-system]``), from a copy of the
sources so that nothing is written into the work tree.
"""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from airflow_mpu_provider import __version__
from tests.support.local_airflow import airflow_environment

ROOT = Path(__file__).resolve().parents[1]
#: What the sdist is built from: the files a release is made of (not tests, not the virtualenvs).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "NOTICE", "CHANGELOG.md", "MANIFEST.in")
SOURCE_DIRS = ("airflow_mpu_provider", "example_dags")


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    tree = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        shutil.copy2(ROOT / name, tree / name)
    for name in SOURCE_DIRS:
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    for hook in ("build_wheel", "build_sdist"):  # one process per hook, as build frontends do
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import sys; from setuptools import build_meta; build_meta.{hook}(sys.argv[1])",
                out,
            ],
            cwd=tree,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{hook} failed:\n{done.stderr[-3000:]}"
    (wheel,), (sdist,) = out.glob("*.whl"), out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        return email.parser.Parser().parsestr(z.read(f"airflow_mpu_provider-{__version__}.dist-info/METADATA").decode())


def test_wheel_ships_license_notice_and_py_typed_but_no_tests_or_example_dags(dists):
    names = set(zipfile.ZipFile(dists["wheel"]).namelist())
    info = f"airflow_mpu_provider-{__version__}.dist-info"
    assert {f"{info}/licenses/LICENSE", f"{info}/licenses/NOTICE"} <= names
    assert "airflow_mpu_provider/py.typed" in names
    assert "airflow_mpu_provider/operators/multipart_upload.py" in names
    assert "airflow_mpu_provider/multipart/engine.py" in names
    # Only the package: example DAGs are documentation (in the sdist and the repository), tests stay home.
    assert {n.split("/")[0] for n in names} == {"airflow_mpu_provider", info}
    license_text = zipfile.ZipFile(dists["wheel"]).read(f"{info}/licenses/LICENSE").decode()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text  # the full text, not a pointer to it


def test_sdist_rebuilds_the_package_and_carries_changelog_and_example_dags(dists):
    with tarfile.open(dists["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"LICENSE", "NOTICE", "CHANGELOG.md", "README.md", "pyproject.toml", "PKG-INFO"} <= names
    assert "airflow_mpu_provider/py.typed" in names
    assert "example_dags/nightly_db_dump.py" in names
    assert not any(n.startswith("tests/") or "__pycache__" in n for n in names)


def test_wheel_metadata_urls_classifiers_license_and_python(dists):
    meta = wheel_metadata(dists["wheel"])
    assert meta["Name"] == "airflow-mpu-provider"
    assert meta["Version"] == __version__
    assert meta["License-Expression"] == "Apache-2.0"
    assert set(meta.get_all("License-File")) == {"LICENSE", "NOTICE"}
    assert meta["Requires-Python"] == ">=3.11"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert set(urls) == {"Homepage", "Documentation", "Changelog", "Source", "Issues"}
    assert len({u.split("#")[0].split("/blob/")[0].removesuffix("/issues") for u in urls.values()}) == 1, urls
    assert urls["Changelog"].endswith("/CHANGELOG.md")
    classifiers = set(meta.get_all("Classifier"))
    assert {"Typing :: Typed", "Framework :: Apache Airflow :: Provider", "Programming Language :: Python :: 3.11"} <= (
        classifiers
    )
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    # Only Python versions that a CI environment runs are claimed.
    assert "Programming Language :: Python :: 3.12" not in classifiers
    entry_points = zipfile.ZipFile(dists["wheel"]).read(
        f"airflow_mpu_provider-{__version__}.dist-info/entry_points.txt"
    )
    assert b"provider_info = airflow_mpu_provider:get_provider_info" in entry_points


def test_build_system_floor_is_the_setuptools_that_understands_the_license_expression():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["build-system"]["requires"] == ["setuptools>=77"]
    assert "setuptools>=77" in project["project"]["optional-dependencies"]["test"]


def test_changelog_has_the_first_release_and_an_unreleased_section():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## Unreleased" in text
    assert f"## {__version__}" in text
    assert text.index("## Unreleased") < text.index(f"## {__version__}")


def test_airflow_providers_get_shows_the_documentation_url_of_the_installed_wheel(dists, tmp_path):
    """Airflow reads ``documentation-url`` from the distribution's Project-URL "Documentation"."""
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(site),
            dists["wheel"],
        ],
        check=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    env = airflow_environment(tmp_path / "home", endpoint="http://127.0.0.1:9", dags_folder=tmp_path / "dags")
    env["PYTHONPATH"] = str(site)  # the installed wheel, ahead of any editable install of the work tree
    airflow = Path(sys.executable).with_name("airflow")
    done = subprocess.run(
        [str(airflow), "providers", "get", "airflow-mpu-provider", "--full", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout[done.stdout.index("[") :])[0]
    meta = wheel_metadata(dists["wheel"])
    documentation = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))["Documentation"]
    # Airflow 3.1 keeps the blank after the comma (later versions strip it); a link works either way.
    assert info["documentation-url"].strip() == documentation
    assert info["package-name"] == "airflow-mpu-provider"
    assert info["versions"] == [__version__]
