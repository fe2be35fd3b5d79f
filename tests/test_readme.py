"""The README's DAG examples are code users paste: each must build a DAG with the operators it shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from airflow_mpu_provider import __version__

README = Path(__file__).parents[1] / "README.md"
DAG_BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if "with DAG(" in b]


def build_dag(source: str):
    """Run a README snippet as a user would paste it, and return the one DAG it builds."""
    from airflow.sdk import DAG

    built = []
    original_enter = DAG.__enter__

    def capture(self):
        built.append(self)
        return original_enter(self)

    DAG.__enter__ = capture  # type: ignore[method-assign]
    try:
        exec(compile(source, str(README), "exec"), {})
    finally:
        DAG.__enter__ = original_enter  # type: ignore[method-assign]
    (dag,) = built
    return dag


def test_the_first_screen_has_the_two_commands_then_install_and_a_dag():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["python3 dev.py demo", "python3 dev.py test"]
    first_screen = text[:2800]
    # The install lines are the tested steps (tests/test_packaging.py), not a name PyPI does not know.
    install = re.findall(r"```bash\n(.*?)```", first_screen, flags=re.S)[1]
    assert "pip wheel --no-deps -w dist ." in install
    assert f"dist/airflow_mpu_provider-{__version__}-py3-none-any.whl" in install  # what that build writes
    assert re.search(r"--constraint \S+/constraints-3\.\d+\.\d+/constraints-3\.\d+\.txt", install)
    assert "pip install airflow-mpu-provider" not in install
    assert DAG_BLOCKS and DAG_BLOCKS[0] in first_screen


@pytest.mark.parametrize("source", DAG_BLOCKS, ids=[f"dag-{i}" for i in range(len(DAG_BLOCKS))])
def test_readme_dag_examples_build_a_dag_of_this_providers_operators(source):
    from airflow_mpu_provider.version_compat import AIRFLOW_V_3_1_8_PLUS

    if "upload_window=" in source and not AIRFLOW_V_3_1_8_PLUS:
        pytest.skip("upload_window needs Airflow >= 3.1.8 (refused when the DAG is parsed before)")
    dag = build_dag(source)
    assert dag.start_date is not None, "a DAG without start_date is what new users copy and then fight with"
    assert dag.tasks
    for task in dag.tasks:
        assert type(task).__module__.startswith("airflow_mpu_provider."), type(task)
        if type(task).__name__ == "MultipartUploadOperator":
            assert task.key and (task.file or task.command)


def module_map(text: str) -> set[str]:
    """The module paths the README's map of ``airflow_mpu_provider/multipart/`` names, relative to it.

    The map's sub-bullets are its folders: one that starts with a folder (```checksums/`: ...``) names
    that folder and the modules in it (``digests.py`` is ``checksums/digests.py``); any other names modules
    at the top of ``multipart/``."""
    entry = re.search(r"^\* `airflow_mpu_provider/multipart/`:(.*?)^\* ", text, flags=re.S | re.M)
    assert entry, "the README's module map has no entry for airflow_mpu_provider/multipart/"
    named = set()
    for item in re.split(r"^\s+\* ", entry.group(1), flags=re.M):
        folder = re.match(r"`((?:\w+/)+)`", item)
        prefix = folder.group(1) if folder else ""
        if folder:
            named.add(prefix)
        named |= {prefix + name for name in re.findall(r"`(\w+\.py)`", item) if name != "__init__.py"}
    return named


def test_the_module_map_names_every_engine_module_and_only_those():
    """The README's map of ``airflow_mpu_provider/multipart/`` is how a newcomer finds their way: it must
    name every module there is, in every folder, and none that is gone."""
    package = README.parent / "airflow_mpu_provider" / "multipart"
    named = module_map(README.read_text())
    modules = {p.relative_to(package).as_posix() for p in package.rglob("*.py")}
    folders = {p.parent.relative_to(package).as_posix() + "/" for p in package.rglob("*/__init__.py")}
    present = {m for m in modules if not m.endswith("__init__.py")} | folders
    assert named == present, f"missing from the map: {sorted(present - named)}; gone: {sorted(named - present)}"


def test_every_path_the_readme_names_exists():
    """The failure table and the text name tests and modules by path (``multipart/test_engine.py``, relative to
    ``tests/`` or the package): a module or test that moved must not leave the README pointing at nothing."""
    root = README.parent
    named = set(re.findall(r"`((?:[\w.-]+/)+\w+\.py)`", README.read_text()))
    assert named
    gone = {
        p
        for p in named
        if not any((base / p).exists() for base in (root, root / "tests", root / "airflow_mpu_provider"))
    }
    assert not gone, f"the README names files that are not there: {sorted(gone)}"
