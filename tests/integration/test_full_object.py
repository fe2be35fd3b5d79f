"""Whole-file (FULL_OBJECT) checksums over HTTP against moto's server, checked against independent CRCs.

moto ignores the checksum a client sends at CompleteMultipartUpload and computes its own from the
bytes it holds (with the ``crc32c`` package installed, a real CRC32C): so the value HeadObject reports
is compared here with a CRC of the local file computed by another library (``crc32c``, ``zlib``,
awscrt's CRC64NVME), never with the engine's own combine, and what the engine *sent* is checked
against the same independent value in the recorded request headers.
"""

from __future__ import annotations

import base64
import functools
import logging
import re
import zlib

import crc32c
import pytest
from awscrt import checksums

from airflow_mpu_provider.multipart import UploadOptions, upload_file
from airflow_mpu_provider.multipart.errors import InvalidUploadRequest, S3UploadError
from airflow_mpu_provider.operators.multipart_upload import STATE_KEY, MultipartUploadOperator
from airflow_mpu_provider.version_compat import AIRFLOW_V_3_3_PLUS
from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.integration.conftest import BUCKET, FakeStateStore, FakeTaskInstance, upload_operator
from tests.support.local_airflow import s3_client
from tests.support.s3_proxy import Fault
from tests.support.seed import seed_crashed_upload

pytestmark = pytest.mark.integration

#: Independent CRCs of a whole byte string (no code shared with the engine's combine).
REFERENCES = {
    "CRC32C": lambda data: crc32c.crc32c(data).to_bytes(4, "big"),
    "CRC32": lambda data: zlib.crc32(data).to_bytes(4, "big"),
    "CRC64NVME": lambda data: checksums.crc64nvme(data).to_bytes(8, "big"),
}


def independent_crc(algorithm: str, path) -> str:
    return base64.b64encode(REFERENCES[algorithm](path.read_bytes())).decode()


def independent_composite(path, part_size: int = 5 * MiB) -> str:
    """S3's COMPOSITE CRC32C (without "-N"): the CRC32C of the concatenated part CRC32Cs."""
    data = path.read_bytes()
    crcs = b"".join(REFERENCES["CRC32C"](data[i : i + part_size]) for i in range(0, len(data), part_size))
    return base64.b64encode(REFERENCES["CRC32C"](crcs)).decode()


operator = functools.partial(upload_operator, concurrency=2)


def stored_checksum(s3, key: str, algorithm: str) -> tuple[str | None, str | None]:
    head = s3.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    return head.get(f"Checksum{algorithm}"), head.get("ChecksumType")


def uploads_of(s3, key: str) -> list[str]:
    return [u["UploadId"] for u in incomplete_uploads(s3, BUCKET, key) if u["Key"] == key]


def header(record, name: str) -> str | None:
    return {k.lower(): v for k, v in record.headers.items()}.get(name)


def logged(caplog, capsys) -> str:
    return caplog.text + capsys.readouterr().out


@pytest.mark.parametrize("algorithm", ["CRC32C", "CRC64NVME", "CRC32"])
def test_a_fresh_upload_gets_the_whole_file_crc_an_independent_tool_computes(
    connection, proxy, s3, tmp_path, caplog, capsys, algorithm
):
    path = make_file(tmp_path / "f", 17 * MiB + 3)  # 4 parts, the last one short
    key = f"full/fresh-{algorithm}.bin"
    expected = independent_crc(algorithm, path)
    with caplog.at_level(logging.INFO):
        result = operator(connection(), path, key, checksum_algorithm=algorithm).execute({})
    assert stored_checksum(s3, key, algorithm) == (expected, "FULL_OBJECT")
    assert (result["checksum"], result["checksum_type"], result["checksum_algorithm"]) == (
        expected,
        "FULL_OBJECT",
        algorithm,
    )
    (create,) = [r for r in proxy.requests() if r.kind == "CreateMultipartUpload"]
    (complete,) = [r for r in proxy.requests() if r.kind == "CompleteMultipartUpload"]
    assert header(create, "x-amz-checksum-type") == "FULL_OBJECT"
    # What we sent (moto does not check it, so check it here): the whole file's CRC.
    assert header(complete, "x-amz-checksum-type") == "FULL_OBJECT"
    assert header(complete, f"x-amz-checksum-{algorithm.lower()}") == expected
    hex_form = base64.b64decode(expected).hex()
    text = logged(caplog, capsys)
    assert f"{algorithm} of the whole file: {expected} (hex {hex_form})" in text
    # The ETag is verified too when every part was sent before the store's first echo came back.
    assert re.search(rf"verified size, (ETag, )?{algorithm} full-object checksum", text), text
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)


@pytest.mark.parametrize("algorithm", ["CRC32C", "CRC64NVME"])
def test_a_resumed_upload_gets_the_whole_file_crc_too(proxy, s3, tmp_path, algorithm):
    """Parts 1 and 3 were sent by a run that crashed; moto's ListParts lists no part checksums, so their
    CRCs come from the read that verifies them against the local file, and are combined with the others'."""
    path = make_file(tmp_path / "f", 17 * MiB + 3)
    key = f"full/resumed-{algorithm}.bin"
    data = path.read_bytes()
    upload_id = seed_crashed_upload(s3, BUCKET, key, data, (1, 3), algorithm=algorithm)
    client = s3_client(proxy.url)
    options = UploadOptions(checksum_algorithm=algorithm, progress_interval=0)
    result = upload_file(client, path, BUCKET, key, part_size=5 * MiB, options=options, resume_upload_id=upload_id)
    assert (result.parts_resumed, result.parts_sent) == (2, 2)
    expected = independent_crc(algorithm, path)
    assert stored_checksum(s3, key, algorithm) == (expected, "FULL_OBJECT")
    assert (result.checksum, result.checksum_type) == (expected, "FULL_OBJECT")
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert uploads_of(s3, key) == []


def test_a_found_upload_of_the_file_is_adopted_and_completed_with_the_whole_file_crc(connection, s3, tmp_path):
    path = make_file(tmp_path / "f", 12 * MiB)
    key = "full/adopted.bin"
    found = seed_crashed_upload(s3, BUCKET, key, path.read_bytes(), (1, 2))
    result = operator(connection(), path, key, adopt_quiet_after=0).execute({})
    assert result["upload_id"] == found and result["parts_resumed"] == 2
    assert stored_checksum(s3, key, "CRC32C") == (independent_crc("CRC32C", path), "FULL_OBJECT")
    assert result["checksum"] == independent_crc("CRC32C", path)


def test_a_found_upload_created_with_another_checksum_type_is_left_alone(connection, s3, tmp_path, caplog, capsys):
    path = make_file(tmp_path / "f", 12 * MiB)
    key = "full/other-type.bin"
    composite = seed_crashed_upload(s3, BUCKET, key, path.read_bytes(), (1, 2), checksum_type=None)
    try:
        with caplog.at_level(logging.INFO):
            result = operator(connection(), path, key, adopt_quiet_after=0).execute({})
        assert result["upload_id"] != composite and result["parts_resumed"] == 0
        assert "the earlier upload used checksum type COMPOSITE, this one uses FULL_OBJECT" in logged(caplog, capsys)
        assert uploads_of(s3, key) == [composite]  # never aborted: it is not ours
        assert stored_checksum(s3, key, "CRC32C") == (independent_crc("CRC32C", path), "FULL_OBJECT")
    finally:
        s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=composite)


def test_composite_on_request_adopts_a_composite_upload_and_reports_composite(connection, s3, tmp_path):
    path = make_file(tmp_path / "f", 12 * MiB)
    key = "full/composite.bin"
    found = seed_crashed_upload(s3, BUCKET, key, path.read_bytes(), (1,), checksum_type=None)
    result = operator(connection(), path, key, adopt_quiet_after=0, checksum_type="COMPOSITE").execute({})
    assert result["upload_id"] == found and result["parts_resumed"] == 1
    value, kind = stored_checksum(s3, key, "CRC32C")  # moto's HeadObject leaves out "-3" and the type
    assert kind in (None, "COMPOSITE") and value.split("-")[0] == independent_composite(path)


@pytest.mark.skipif(not AIRFLOW_V_3_3_PLUS, reason="task_state_store needs Airflow >= 3.3")
def test_a_recorded_upload_of_another_checksum_type_is_aborted_not_continued(
    connection, proxy, s3, tmp_path, caplog, capsys
):
    path = make_file(tmp_path / "f", 17 * MiB)
    key = "full/recorded-other-type.bin"
    store = FakeStateStore()
    conn = connection(config_kwargs={"retries": {"mode": "standard", "max_attempts": 0}})
    proxy.fail_nth("UploadPart", 3)
    first = operator(conn, path, key, checksum_type="COMPOSITE", concurrency=1)
    with pytest.raises(S3UploadError):
        first.execute({"ti": FakeTaskInstance(try_number=1, max_tries=1), "task_state_store": store})
    proxy.on_request = None
    kept = uploads_of(s3, key)
    assert len(kept) == 1 and store.get(STATE_KEY)["checksum_type"] == "COMPOSITE"
    with caplog.at_level(logging.INFO):
        result = operator(conn, path, key).execute(
            {"ti": FakeTaskInstance(try_number=2, max_tries=1), "task_state_store": store}
        )
    assert "checksum_type" in logged(caplog, capsys)  # named among what differs from the record
    assert result["upload_id"] != kept[0] and result["parts_resumed"] == 0
    assert uploads_of(s3, key) == []  # ours: aborted
    assert stored_checksum(s3, key, "CRC32C") == (independent_crc("CRC32C", path), "FULL_OBJECT")


# -- a store that refuses full-object checksums ---------------------------------------------------


def test_a_store_refusing_the_type_at_create_falls_back_to_composite_with_one_warning(
    connection, proxy, s3, tmp_path, caplog, capsys
):
    path = make_file(tmp_path / "f", 12 * MiB)
    key = "full/refused-at-create.bin"
    proxy.add_fault(Fault(kind="CreateMultipartUpload", action="error", status=400, code="InvalidArgument", times=1))
    with caplog.at_level(logging.INFO):
        result = operator(connection(), path, key).execute({})
    creates = [r for r in proxy.requests() if r.kind == "CreateMultipartUpload"]
    assert [header(r, "x-amz-checksum-type") for r in creates] == ["FULL_OBJECT", None]
    (complete,) = [r for r in proxy.requests() if r.kind == "CompleteMultipartUpload"]
    assert header(complete, "x-amz-checksum-type") is None
    assert logged(caplog, capsys).count("The store refused a full-object (FULL_OBJECT) CRC32C checksum") == 1
    value, kind = stored_checksum(s3, key, "CRC32C")
    assert kind in (None, "COMPOSITE") and value.split("-")[0] == independent_composite(path)
    assert result["checksum_type"] != "FULL_OBJECT"
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)


def test_a_store_refusing_the_whole_file_checksum_at_complete_completes_without_it_with_one_warning(
    connection, proxy, s3, tmp_path, caplog, capsys
):
    path = make_file(tmp_path / "f", 12 * MiB)
    key = "full/refused-at-complete.bin"
    # replace=False: the conditional Complete (IfNoneMatch) and the type fall back independently.
    proxy.add_fault(Fault(kind="CompleteMultipartUpload", action="error", status=501, code="NotImplemented", times=1))
    with caplog.at_level(logging.INFO):
        operator(connection(), path, key).execute({})
    completes = [r for r in proxy.requests() if r.kind == "CompleteMultipartUpload"]
    assert [header(r, "x-amz-checksum-type") for r in completes] == ["FULL_OBJECT", None]
    assert [header(r, "if-none-match") for r in completes] == ["*", "*"]  # the condition was kept
    text = logged(caplog, capsys)
    assert text.count("The store refused a full-object (FULL_OBJECT) CRC32C checksum at CompleteMultipartUpload") == 1
    assert "does not support a conditional CompleteMultipartUpload" not in text
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert uploads_of(s3, key) == []


@pytest.mark.parametrize("source", ["file", "stream"])
def test_a_whole_file_value_other_than_the_parts_make_is_judged_by_what_else_proves_the_object(
    proxy, s3, tmp_path, monkeypatch, caplog, source
):
    """The check is real: the store's whole-file CRC differs from the one the parts make. A file is read again
    for its parts' MD5s, whose ETag proves the object (success, said so, no checksum reported); a stream cannot
    be, and nothing else proves it: the upload fails as corrupt."""
    from airflow_mpu_provider.multipart import completion
    from airflow_mpu_provider.multipart.checksums import verify
    from airflow_mpu_provider.multipart.errors import IntegrityError
    from airflow_mpu_provider.multipart.sources.command import CommandSource
    from airflow_mpu_provider.multipart.stream_engine import StreamUploadEngine

    path = make_file(tmp_path / "f", 12 * MiB)
    key = f"full/wrong-{source}.bin"
    for module in (verify, completion):
        monkeypatch.setattr(module, "full_object_checksum", lambda algorithm, parts: "AAAAAA==")
    options = UploadOptions(progress_interval=0)
    if source == "file":
        with caplog.at_level(logging.INFO):
            result = upload_file(s3_client(proxy.url), path, BUCKET, key, part_size=5 * MiB, options=options)
        assert (result.checksum, result.checksum_type) == (None, None)
        assert "verified size, ETag" in caplog.text  # every part's MD5 known, or the file read again for them
        assert "expected AAAAAA== from the parts' CRCs), but the object's ETag proves every part's bytes" in caplog.text
        return
    with (
        CommandSource(f"cat {path}") as stream,
        pytest.raises(IntegrityError, match="full-object checksum CRC32C is .*, expected AAAAAA=="),
    ):
        StreamUploadEngine(
            s3_client(proxy.url), bucket=BUCKET, key=key, stream=stream, first_part_size=5 * MiB, options=options
        ).run()


# -- refusals before any request --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "checksum_type", "message"),
    [
        ("SHA256", "FULL_OBJECT", "works only with checksum_algorithm"),
        ("CRC64NVME", "COMPOSITE", "only as a FULL_OBJECT checksum"),
        (None, "FULL_OBJECT", "needs a checksum_algorithm"),
        ("CRC32C", "full", "is not a checksum type"),
    ],
)
def test_impossible_checksum_types_are_refused_before_any_request(
    connection, proxy, tmp_path, algorithm, checksum_type, message
):
    path = make_file(tmp_path / "f", 6 * MiB)
    with pytest.raises(InvalidUploadRequest, match=message):
        operator(connection(), path, "full/refused.bin", checksum_algorithm=algorithm, checksum_type=checksum_type)
    options = UploadOptions(checksum_algorithm=algorithm, checksum_type=checksum_type)
    with pytest.raises(InvalidUploadRequest, match=message):
        upload_file(s3_client(proxy.url), path, BUCKET, "full/refused.bin", options=options)
    assert proxy.requests() == []


def test_a_command_stream_gets_the_whole_file_crc_of_its_output(connection, s3, tmp_path):
    """The operator's stream path: the last part is short, and the combine takes each part's own size."""
    path = make_file(tmp_path / "f", 23 * MiB + 11)
    key = "full/stream.bin"
    op = MultipartUploadOperator(
        task_id="stream",
        command=f"cat {path}",
        key=f"s3://{BUCKET}/{key}",
        aws_conn_id=connection(),
        part_size=5 * MiB,
        progress_interval=0,
    )
    result = op.execute({})
    expected = independent_crc("CRC32C", path)
    assert stored_checksum(s3, key, "CRC32C") == (expected, "FULL_OBJECT")
    assert (result["checksum"], result["checksum_type"]) == (expected, "FULL_OBJECT")


def test_our_upload_listed_with_another_checksum_type_is_aborted_not_continued(proxy, s3, tmp_path, caplog):
    """AWS's ListParts names the upload's ChecksumType (moto's does not: the listing is made to say it)."""
    path = make_file(tmp_path / "f", 12 * MiB)
    key = "full/listed-other-type.bin"
    earlier = seed_crashed_upload(s3, BUCKET, key, path.read_bytes(), (1,))
    client = s3_client(proxy.url)

    def as_aws_lists_it(parsed, **_):
        parsed.setdefault("ChecksumAlgorithm", "CRC32C")
        parsed.setdefault("ChecksumType", "FULL_OBJECT")

    client.meta.events.register("after-call.s3.ListParts", as_aws_lists_it)
    options = UploadOptions(checksum_type="COMPOSITE", progress_interval=0)
    with caplog.at_level(logging.INFO):
        result = upload_file(client, path, BUCKET, key, part_size=5 * MiB, options=options, resume_upload_id=earlier)
    assert "the earlier upload used checksum type FULL_OBJECT, this one uses COMPOSITE" in caplog.text
    assert result.upload_id != earlier and result.parts_resumed == 0
    assert uploads_of(s3, key) == []


def test_growing_stream_parts_combine_into_the_whole_file_crc(proxy, s3, tmp_path):
    """Parts of 5, 5, 10 and 3 MiB (the size doubles every 2 parts here): no single part size exists."""
    from airflow_mpu_provider.multipart.sources.command import CommandSource
    from airflow_mpu_provider.multipart.stream_engine import StreamUploadEngine

    path = make_file(tmp_path / "f", 23 * MiB)
    key = "full/growing.bin"
    with CommandSource(f"cat {path}") as source:
        result = StreamUploadEngine(
            s3_client(proxy.url),
            bucket=BUCKET,
            key=key,
            stream=source,
            first_part_size=5 * MiB,
            parts_per_size=2,
            options=UploadOptions(checksum_algorithm="CRC64NVME", progress_interval=0),
        ).run()
    sizes = sorted({r.body_bytes for r in proxy.requests() if r.kind == "UploadPart"})
    assert result.parts == 4 and sizes == [3 * MiB, 5 * MiB, 10 * MiB]
    expected = independent_crc("CRC64NVME", path)
    assert stored_checksum(s3, key, "CRC64NVME") == (expected, "FULL_OBJECT")
    assert (result.checksum, result.checksum_type) == (expected, "FULL_OBJECT")
