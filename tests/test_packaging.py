"""The package as a user gets it: build the wheel and the sdist, look inside, install the wheel, ask Airflow.

Built without network and without build isolation, with the setuptools of the test environment (the
``test`` extra requires setuptools >= 77, the same floor as ``[build-system]``), from a copy of the
sources so that nothing is written into the work tree.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
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
    assert "airflow_mpu_provider/multipart/file_engine.py" in names
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


# -- the README's install steps -------------------------------------------------------------------

#: What the README's "Installing" section tells a user to run (checked against the README below).
README_WHEEL = "pip wheel --no-deps -w dist ."
README_INSTALL = 'pip install "apache-airflow==${AIRFLOW_VERSION}" dist/airflow_mpu_provider-*.whl \\'
#: What Airflow's constraints file pins among the provider's dependencies; offline, the test stands in
#: for that file with the versions installed in the test environment.
CONSTRAINED = (
    "apache-airflow",
    "apache-airflow-providers-amazon",
    "apache-airflow-providers-common-compat",
    "boto3",
    "botocore",
    "awscrt",
)
#: Not 0.1.0: the test environment has this checkout installed (editable) as 0.1.0, which pip would
#: take for the wheel already being installed.
TEST_VERSION = f"{__version__}+installtest"


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    return text[start : text.index("\n## ", start + 1)]


def test_the_readme_install_steps_name_what_the_wheel_requires():
    """The README lists the provider's own requirements: the wheel's Requires-Dist, floor for floor."""
    section = readme_section("Installing")
    assert README_WHEEL in section and README_INSTALL in section
    assert "/constraints-${AIRFLOW_VERSION}/constraints-${PYTHON_VERSION}.txt" in section
    assert '"moto[server]" crc32c' in section
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        assert f"`{requirement}`" in section, f"the README's Installing section does not name {requirement}"
    assert f"Python {project['requires-python'].removeprefix('>=')}+" in section


def test_the_readme_install_steps_work_in_a_fresh_virtualenv_without_network(tmp_path):
    """``pip wheel`` in a checkout, then ``pip install apache-airflow==X <wheel> --constraint ...`` into a
    fresh virtualenv: offline (``--no-index``, the provider's dependencies taken from the test
    environment's site-packages, which the virtualenv sees through a path file), and the installed provider imports and
    registers with Airflow through its entry point."""
    tree = tmp_path / "checkout"
    tree.mkdir()
    for name in SOURCES:
        shutil.copy2(ROOT / name, tree / name)
    for name in SOURCE_DIRS:
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    init = tree / "airflow_mpu_provider" / "__init__.py"
    init.write_text(init.read_text().replace(f'__version__ = "{__version__}"', f'__version__ = "{TEST_VERSION}"'))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of the work tree
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    pip = [sys.executable, "-m", "pip"]
    offline = ["--no-index", "--no-build-isolation"]  # the README's build, with the test's setuptools
    run(pip + README_WHEEL.split()[1:] + offline, cwd=tree, env=env)
    (wheel,) = (tree / "dist").glob("airflow_mpu_provider-*.whl")
    assert wheel.name == f"airflow_mpu_provider-{TEST_VERSION}-py3-none-any.whl"

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    # The dependencies already installed here, as --system-site-packages would give a virtualenv made from
    # the system Python (this one is itself a virtualenv): a path, so this environment's .pth files (the
    # editable install of the checkout among them) are not run there.
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path, env=env)
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site.stdout.strip()) / "test-environment.pth").write_text("".join(f"{path}\n" for path in sorted(ours)))
    constraints = tmp_path / "constraints.txt"  # Airflow's constraints file, as far as these packages go
    constraints.write_text("".join(f"{name}=={importlib.metadata.version(name)}\n" for name in CONSTRAINED))
    airflow = f"apache-airflow=={importlib.metadata.version('apache-airflow')}"
    readme_install = ["install", airflow, str(wheel), "--constraint", str(constraints)]
    done = run(
        [*pip, "--python", str(python), *readme_install, "--no-index", "--find-links", str(wheel.parent)],
        cwd=tmp_path,
        env=env,
    )
    assert f"Successfully installed airflow-mpu-provider-{TEST_VERSION}" in done.stdout, done.stdout[-2000:]

    check = """
import importlib.metadata, json, sys
points = importlib.metadata.entry_points(group="apache_airflow_provider")
(entry,) = [e for e in points if e.value.startswith("airflow_mpu_provider")]
info = entry.load()()
from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator
import airflow_mpu_provider
print(json.dumps({"file": airflow_mpu_provider.__file__, "version": importlib.metadata.version("airflow-mpu-provider"),
                  "package": info["package-name"], "operator": MultipartUploadOperator.__name__}))
"""
    out = json.loads(run([str(python), "-c", check], cwd=tmp_path, env=env).stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(venv)), out  # the installed wheel, not the checkout
    assert (out["version"], out["package"], out["operator"]) == (
        TEST_VERSION,
        "airflow-mpu-provider",
        "MultipartUploadOperator",
    )


def run(command: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done
