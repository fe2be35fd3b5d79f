from __future__ import annotations

import os

import pytest

from airflow_mpu_provider.multipart.errors import InvalidUploadRequest, SourceChangedError
from airflow_mpu_provider.multipart.sources.file import FileSource
from tests.conftest import make_file


def test_reads_exact_ranges(tmp_path):
    path = make_file(tmp_path / "f", 1000)
    data = path.read_bytes()
    with FileSource(path) as src:
        assert src.size == 1000
        assert src.read(0, 10) == data[:10]
        assert src.read(990, 10) == data[990:]


def test_missing_file(tmp_path):
    with pytest.raises(InvalidUploadRequest, match="does not exist"):
        FileSource(tmp_path / "nope")


def test_directory(tmp_path):
    with pytest.raises(InvalidUploadRequest, match="is a directory"):
        FileSource(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path):
    path = make_file(tmp_path / "f", 10)
    path.chmod(0)
    with pytest.raises(InvalidUploadRequest, match="not readable"):
        FileSource(path)


def test_unreadable_file_as_root_is_reported_too(tmp_path, monkeypatch):
    path = make_file(tmp_path / "f", 10)

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(InvalidUploadRequest, match="not readable"):
        FileSource(path)


def test_special_file_is_refused():
    with pytest.raises(InvalidUploadRequest, match="not a regular file"):
        FileSource("/dev/null")


def test_truncation_is_detected_on_read_and_on_check(tmp_path):
    path = make_file(tmp_path / "f", 1000)
    with FileSource(path) as src:
        os.truncate(path, 500)
        with pytest.raises(SourceChangedError, match="ended at byte 500"):
            src.read(400, 200)
        with pytest.raises(SourceChangedError, match="changed during the upload"):
            src.check_unchanged()


def test_append_is_detected(tmp_path):
    path = make_file(tmp_path / "f", 1000)
    with FileSource(path) as src:
        with path.open("ab") as f:
            f.write(b"more")
        with pytest.raises(SourceChangedError, match="1,000 -> 1,004"):
            src.check_unchanged()


def test_deletion_and_replacement_are_detected(tmp_path):
    path = make_file(tmp_path / "f", 1000)
    with FileSource(path) as src:
        path.unlink()
        with pytest.raises(SourceChangedError, match="deleted"):
            src.check_unchanged()
        make_file(path, 1000, seed=1)
        with pytest.raises(SourceChangedError, match="replaced"):
            src.check_unchanged()
