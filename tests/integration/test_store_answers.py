"""CompleteMultipartUpload and its verification against stores that answer otherwise than moto does.

Over HTTP to moto's server through the proxy, which answers as the store would (``tests/support/
store_standins.py``, proxy faults, hooks that act between two requests): a store without checksums
whose Complete schema allows only PartNumber and ETag (OpenStack Swift's s3api), one that refuses the
checksums at Complete although it echoed them, Swift's 412 ``InvalidRequest`` for a failed
``If-None-Match``, AWS's 409 ``ConditionalRequestConflict``, another writer completing the key between
our Complete and our HeadObject, a store that ignores ``ChecksumType=FULL_OBJECT`` and leaves ``-N`` out,
and moto without the ``crc32c`` package (CRC32 labelled CRC32C).
"""

from __future__ import annotations

import base64
import logging
import zlib

import crc32c
import pytest

from airflow_mpu_provider.multipart import UploadOptions, completion, upload_file
from airflow_mpu_provider.multipart.errors import IntegrityError, S3UploadError
from airflow_mpu_provider.multipart.sources.command import CommandSource
from airflow_mpu_provider.multipart.stream_engine import StreamUploadEngine
from airflow_mpu_provider.multipart.upload import MultipartUpload
from tests.conftest import MiB, incomplete_uploads, make_file, sha256_file, sha256_object
from tests.integration.conftest import BUCKET, upload_operator
from tests.support.local_airflow import SIGNED_PAYLOAD, moto_server_process, s3_client
from tests.support.s3_proxy import Fault, S3Proxy
from tests.support.seed import seed_crashed_upload
from tests.support.store_standins import ChecksumlessStore

pytestmark = pytest.mark.integration

PART = 5 * MiB


def options(**kwargs) -> UploadOptions:
    kwargs.setdefault("progress_interval", 0)
    return UploadOptions(**kwargs)


def completes(proxy) -> list:
    return [r for r in proxy.requests() if r.kind == "CompleteMultipartUpload"]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# -- #18: a store that shows no checksums, and one that refuses them at Complete ---------------------


def test_the_defaults_complete_on_a_store_without_checksums_and_verify_by_the_etag(
    connection, proxy, s3, tmp_path, caplog, capsys
):
    """Swift: no echo, no algorithm named anywhere, MalformedXML for a Checksum element in Complete's XML.
    Today every upload with the defaults fails there, after all its bytes were sent."""
    proxy.store = store = ChecksumlessStore()
    path = make_file(tmp_path / "f", 3 * PART + 7)
    key = "stores/swift-defaults.bin"
    with caplog.at_level(logging.INFO):
        result = upload_operator(connection(), path, key).execute({})
    assert store.refused == 0 and [r.status for r in completes(proxy)] == [200]
    text = caplog.text + capsys.readouterr().out
    assert result["etag"].endswith("-4") and "verified size, ETag." in text
    assert (result["checksum"], result["checksum_type"]) == (None, None)  # the store keeps none
    assert "completing s3://it-bucket/stores/swift-defaults.bin with PartNumber and ETag only" in text
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)


def test_a_resumed_upload_completes_on_a_store_without_checksums(proxy, s3, tmp_path):
    proxy.store = store = ChecksumlessStore()
    path = make_file(tmp_path / "f", 3 * PART)
    key = "stores/swift-resumed.bin"
    earlier = seed_crashed_upload(s3, BUCKET, key, path.read_bytes(), (1, 2))
    result = upload_file(
        s3_client(proxy.url), path, BUCKET, key, part_size=PART, options=options(), resume_upload_id=earlier
    )
    assert (result.upload_id, result.parts_resumed, result.parts_sent) == (earlier, 2, 1)
    assert store.refused == 0 and result.checksum is None
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)


@pytest.mark.parametrize("resumed", [False, True])
def test_a_store_refusing_checksums_at_complete_is_completed_once_without_them(proxy, s3, tmp_path, caplog, resumed):
    """The store echoed the parts' CRCs (so Complete names them) but its Complete schema refuses them: one
    warning, a second Complete with PartNumber and ETag only, and the object verified; for a resumed upload
    too. concurrency=1: parts after the first echo carry no MD5, so the ETag needs the file read again."""
    proxy.store = store = ChecksumlessStore(echo=True)
    path = make_file(tmp_path / "f", 3 * PART + 11)
    key = f"stores/refuses-at-complete-{resumed}.bin"
    earlier = seed_crashed_upload(s3, BUCKET, key, path.read_bytes(), (1, 3)) if resumed else None
    with caplog.at_level(logging.INFO):
        result = upload_file(
            s3_client(proxy.url, **SIGNED_PAYLOAD),
            path,
            BUCKET,
            key,
            part_size=PART,
            options=options(concurrency=1),
            resume_upload_id=earlier,
        )
    assert store.refused == 1 and [r.status for r in completes(proxy)] == [400, 200]
    assert caplog.text.count("The store refused the checksums sent with CompleteMultipartUpload") == 1
    assert "verified size, CRC32C full-object checksum" in caplog.text
    whole = b64(crc32c.crc32c(path.read_bytes()).to_bytes(4, "big"))
    # moto keeps the whole-file CRC the upload was created for: verified, so reported; nothing else would be.
    assert (result.checksum, result.checksum_type) == (whole, "FULL_OBJECT")
    assert result.parts_resumed == (2 if resumed else 0)
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert incomplete_uploads(s3, BUCKET, key) == []


def test_a_store_that_shows_no_checksums_but_wants_them_back_gets_them_on_the_second_complete(
    proxy, s3, tmp_path, caplog
):
    proxy.store = store = ChecksumlessStore(requires_checksums=True)
    path = make_file(tmp_path / "f", 2 * PART)
    key = "stores/wants-checksums.bin"
    with caplog.at_level(logging.INFO):
        result = upload_file(s3_client(proxy.url), path, BUCKET, key, part_size=PART, options=options())
    assert store.refused == 1 and [r.status for r in completes(proxy)] == [400, 200]
    assert caplog.text.count("The store wants the parts' checksums at Complete") == 1
    assert result.checksum is None  # the store's answers show no object checksum
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)


# -- #18: a failed precondition is a 412, whatever the code -------------------------------------------


@pytest.mark.parametrize("same", [True, False])
def test_swifts_412_invalid_request_is_a_precondition_failure(connection, proxy, s3, tmp_path, same):
    """Swift answers Complete with If-None-Match on an existing key 412 InvalidRequest (AWS: PreconditionFailed).
    The object appeared while the upload ran: exactly the file is success, anything else is never replaced;
    neither is told to set checksum_algorithm=None (which it already was)."""
    path = make_file(tmp_path / "f", 2 * PART)
    key = f"stores/412-{same}.bin"
    there = path.read_bytes() if same else b"someone else's bytes"
    proxy.add_fault(Fault(kind="CompleteMultipartUpload", action="error", status=412, code="InvalidRequest", times=1))
    client = s3_client(proxy.url)

    def appears(record):
        if record.kind == "UploadPart" and record.part_number == 1:
            s3.put_object(Bucket=BUCKET, Key=key, Body=there)

    proxy.on_request = appears
    opts = options(checksum_algorithm=None, overwrite=False, concurrency=1)
    if same:
        result = upload_file(client, path, BUCKET, key, part_size=PART, options=opts)
        assert result.etag == s3.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
    else:
        with pytest.raises(S3UploadError) as caught:
            upload_file(client, path, BUCKET, key, part_size=PART, options=opts)
        assert caught.value.code == "ObjectExists" and "checksum_algorithm" not in str(caught.value)
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == there
    assert incomplete_uploads(s3, BUCKET, key) == []


# -- Swift under load: its segment check meets a busy object server ------------------------------------

#: What Swift's s3api answered a Complete whose SLO segment check met an overloaded object server.
SWIFT_BUSY = "Errors:\n/mpu-bench+segments/f/upload/25: 503 Service Unavailable"


@pytest.mark.parametrize("refusals", [2, 5])
def test_a_complete_refused_because_swifts_backend_was_busy_is_sent_again(
    proxy, s3, tmp_path, caplog, monkeypatch, refusals
):
    """Swift answers 400 InvalidRequest carrying a 503 when its backend is busy; no retry mode retries a 400.
    Complete is sent again after pauses (here shortened) and succeeds; when the store stays busy past the
    pauses, the error stands, saying what the store said, and the upload is aborted."""
    monkeypatch.setattr(completion, "BUSY_PAUSES", (0.01,) * 4)
    path = make_file(tmp_path / "f", 2 * PART)
    key = f"stores/busy-{refusals}.bin"
    busy = Fault(
        kind="CompleteMultipartUpload",
        action="error",
        status=400,
        code="InvalidRequest",
        times=refusals,
        message=SWIFT_BUSY,
    )
    proxy.add_fault(busy)
    client = s3_client(proxy.url)
    caplog.set_level(logging.WARNING)
    if refusals <= len(completion.BUSY_PAUSES):
        upload_file(client, path, BUCKET, key, part_size=PART, options=options())
        assert sha256_object(s3, BUCKET, key) == sha256_file(path)
        assert caplog.text.count("the store's backend was busy") == refusals
    else:
        with pytest.raises(S3UploadError) as caught:
            upload_file(client, path, BUCKET, key, part_size=PART, options=options())
        assert caught.value.code == "InvalidRequest" and "503 Service Unavailable" in str(caught.value)
        assert not [o for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=key).get("Contents", [])]
    assert proxy.injections(busy) == refusals
    assert incomplete_uploads(s3, BUCKET, key) == []


def test_a_plain_invalid_request_at_complete_is_not_sent_again(proxy, s3, tmp_path):
    """A 400 that says nothing of a busy store is the request's fault: no second Complete."""
    path = make_file(tmp_path / "f", 2 * PART)
    key = "stores/invalid.bin"
    proxy.add_fault(Fault(kind="CompleteMultipartUpload", action="error", status=400, code="InvalidRequest"))
    with pytest.raises(S3UploadError):  # no checksums: nothing for the checksum fallback to drop either
        upload_file(s3_client(proxy.url), path, BUCKET, key, part_size=PART, options=options(checksum_algorithm=None))
    assert len([r for r in proxy.requests() if r.kind == "CompleteMultipartUpload"]) == 1


# -- AWS: racing conditional completions ------------------------------------------------------------


@pytest.mark.parametrize("other_lands", [False, True])
def test_a_conditional_request_conflict_is_handled_as_the_race_it_is(proxy, s3, tmp_path, caplog, other_lands):
    """409 ConditionalRequestConflict: Complete is tried once more and S3 decides. If the other write did not
    land, ours completes; if it did, it is compared and never replaced."""
    path = make_file(tmp_path / "f", 2 * PART)
    key = f"stores/409-{other_lands}.bin"
    conflict = Fault(
        kind="CompleteMultipartUpload", action="error", status=409, code="ConditionalRequestConflict", times=1
    )
    proxy.add_fault(conflict)

    def other_write(record):
        if record.kind == "CompleteMultipartUpload" and record.injected and other_lands:
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"the other writer's object")

    proxy.on_request = other_write
    client = s3_client(proxy.url)
    with caplog.at_level(logging.INFO):
        if other_lands:
            with pytest.raises(S3UploadError) as caught:
                upload_file(client, path, BUCKET, key, part_size=PART, options=options(overwrite=False))
            assert caught.value.code == "ObjectExists"
            assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"the other writer's object"
        else:
            upload_file(client, path, BUCKET, key, part_size=PART, options=options(overwrite=False))
            assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert proxy.injections(conflict) == 1 and len(completes(proxy)) == 2
    assert "conflicting conditional write" in caplog.text
    assert incomplete_uploads(s3, BUCKET, key) == []


# -- #19.3: judge what Complete made, not what the key holds a moment later ---------------------------


@pytest.mark.parametrize("source", ["file", "stream"])
def test_another_writer_completing_the_key_after_us_is_a_race_not_corruption(proxy, s3, tmp_path, caplog, source):
    """Run B writes the key between A's Complete and A's HeadObject. A must not call B's intact object corrupt,
    nor advise re-running with replace=True (which would put A's older file over B's)."""
    path = make_file(tmp_path / "f", 3 * PART)
    key = f"stores/race-{source}.bin"

    def run_b_completes(record):
        if record.kind == "CompleteMultipartUpload" and record.status == 200:
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"run B's newer object")

    proxy.on_request = run_b_completes
    client = s3_client(proxy.url, **SIGNED_PAYLOAD)
    with caplog.at_level(logging.INFO):
        if source == "file":  # read again for the parts' MD5s: Complete's ETag proves what A completed
            result = upload_file(client, path, BUCKET, key, part_size=PART, options=options(concurrency=1))
            assert result.etag.endswith("-3")
            text = caplog.text
        else:  # a stream cannot be read again: nothing proves A's object any more, and that is what is said
            with CommandSource(f"cat {path}") as stream, pytest.raises(S3UploadError) as caught:
                StreamUploadEngine(
                    client, bucket=BUCKET, key=key, stream=stream, first_part_size=PART, options=options(concurrency=1)
                ).run()
            assert caught.value.code == "ObjectReplaced"
            text = str(caught.value)
    assert "Another writer replaced s3://it-bucket/" in text and "must not" in text
    assert "corrupt" not in text.replace("not found corrupt", "") and "re-run the task with replace=True" not in text
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"run B's newer object"


def test_a_store_refusing_if_match_on_head_object_is_checked_by_comparing_the_etags(proxy, s3, tmp_path):
    path = make_file(tmp_path / "f", 2 * PART)
    key = "stores/no-if-match.bin"
    proxy.add_fault(Fault(kind="HeadObject", action="error", status=501, code="NotImplemented", times=1))
    result = upload_file(s3_client(proxy.url), path, BUCKET, key, part_size=PART, options=options())
    heads = [r for r in proxy.requests() if r.kind == "HeadObject"]
    assert [r.status for r in heads] == [501, 200]
    assert {k.lower(): v for k, v in heads[0].headers.items()}["if-match"] == f'"{result.etag}"'
    assert "if-match" not in {k.lower() for k in heads[1].headers}
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)


def test_on_a_versioned_bucket_the_version_complete_made_is_the_one_verified(proxy, s3, tmp_path, caplog):
    """Complete returned a VersionId: HeadObject asks for that version, so a newer one written meanwhile
    neither fails the upload nor stands in for it."""
    bucket = "it-versioned"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    path = make_file(tmp_path / "f", 2 * PART)
    key = "stores/versioned.bin"

    def run_b_writes(record):
        if record.kind == "CompleteMultipartUpload" and record.status == 200:
            s3.put_object(Bucket=bucket, Key=key, Body=b"a newer version")

    proxy.on_request = run_b_writes
    with caplog.at_level(logging.INFO):
        result = upload_file(s3_client(proxy.url), path, bucket, key, part_size=PART, options=options())
    assert result.version_id and result.checksum
    (head,) = [r for r in proxy.requests() if r.kind == "HeadObject"]
    assert head.query.get("versionId") == result.version_id and head.status == 200
    assert "Another writer" not in caplog.text
    version = s3.get_object(Bucket=bucket, Key=key, VersionId=result.version_id)["Body"].read()
    assert version == path.read_bytes()


# -- #19.6: a store that ignores FULL_OBJECT, leaves out -N, and stored a flipped byte ----------------


@pytest.mark.parametrize("flipped", [True, False])
def test_a_composite_without_its_part_count_is_checked_against_the_parts(
    proxy, s3, tmp_path, monkeypatch, caplog, flipped
):
    path = make_file(tmp_path / "f", 3 * PART + 5)
    key = f"stores/ignores-full-object-{flipped}.bin"
    client = s3_client(proxy.url, **SIGNED_PAYLOAD)

    def ignore_the_type(request, **_):  # the store never learns of it: the object is COMPOSITE
        for name in [h for h in request.headers if h.lower() == "x-amz-checksum-type"]:
            del request.headers[name]

    def without_the_part_count(parsed, **_):
        if "ChecksumCRC32C" in parsed:
            parsed["ChecksumCRC32C"] = parsed["ChecksumCRC32C"].split("-")[0]

    client.meta.events.register("before-sign.s3.CreateMultipartUpload", ignore_the_type)
    client.meta.events.register("after-call.s3.HeadObject", without_the_part_count)
    real_put = MultipartUpload.put_part

    def flip_a_byte_of_part_3(self, number, data, digest, **kwargs):
        if number == 3 and flipped:  # stored with a flipped byte, the CRC of the good bytes echoed
            data = bytes([data[0] ^ 0x01]) + data[1:]
        return real_put(self, number, data, digest, **kwargs)

    monkeypatch.setattr(MultipartUpload, "put_part", flip_a_byte_of_part_3)
    with caplog.at_level(logging.INFO):
        if flipped:
            with pytest.raises(IntegrityError, match="expected the composite .*The object is corrupt"):
                upload_file(client, path, BUCKET, key, part_size=PART, options=options(concurrency=1))
            return
        result = upload_file(client, path, BUCKET, key, part_size=PART, options=options(concurrency=1))
    assert result.checksum_type == "COMPOSITE" and result.checksum.endswith("-4")
    assert caplog.text.count("the store ignored ChecksumType=FULL_OBJECT") == 1


# -- #19.7: moto without the crc32c package ---------------------------------------------------------


@pytest.fixture(scope="module")
def moto_without_crc32c(tmp_path_factory):
    """moto's server as a stock install runs it: without the optional crc32c package, so that it computes
    CRC32 for CRC32C (its own fallback; a module that fails to import stands in for the missing package)."""
    import os

    shadow = tmp_path_factory.mktemp("no-crc32c")
    (shadow / "crc32c.py").write_text("raise ImportError('crc32c is not installed (test stand-in)')\n")
    path = os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")])
    with moto_server_process(PYTHONPATH=path) as endpoint:
        s3_client(endpoint).create_bucket(Bucket=BUCKET)
        with S3Proxy(endpoint) as proxy:
            yield proxy


@pytest.mark.parametrize("checksum_type", ["FULL_OBJECT", "COMPOSITE"])
def test_crc32_labelled_crc32c_is_called_the_stores_defect_and_the_object_judged_by_what_proves_it(
    moto_without_crc32c, tmp_path, caplog, checksum_type
):
    proxy = moto_without_crc32c
    path = make_file(tmp_path / "f", 3 * PART + 3)
    key = f"stores/moto-crc32-{checksum_type}.bin"
    client = s3_client(proxy.url)
    data = path.read_bytes()
    with caplog.at_level(logging.INFO):
        result = upload_file(
            client, path, BUCKET, key, part_size=PART, options=options(concurrency=1, checksum_type=checksum_type)
        )
    form = "whole-file" if checksum_type == "FULL_OBJECT" else "composite"
    assert f"the store reports as CRC32C the file's {form} CRC32 checksum" in caplog.text
    assert "install it where moto runs" in caplog.text
    assert "ETag" in caplog.text.split("verified ")[-1]  # proved by the parts' MD5s as well
    assert (result.checksum, result.checksum_type) == (None, None)
    crc32 = b64(zlib.crc32(data).to_bytes(4, "big"))
    head = client.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert checksum_type == "COMPOSITE" or head["ChecksumCRC32C"] == crc32  # the defect is real
    # (The test's own read must not validate the mislabelled CRC botocore would check it against.)
    reader = s3_client(proxy.url, response_checksum_validation="when_required")
    assert reader.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data


# -- #19 also seen: a resume across a change of algorithm on a store whose ListParts names none ------


def test_a_resume_across_a_change_of_algorithm_never_reports_a_checksum_the_object_does_not_have(proxy, s3, tmp_path):
    """The earlier try used CRC32; this one uses CRC32C; ListParts (as on some stores) names no algorithm, so the
    change goes unnoticed. The object keeps whatever checksum its upload was created with: the result may
    report only that, verified, never a CRC32C computed here that the store does not keep."""
    path = make_file(tmp_path / "f", 3 * PART)
    key = "stores/resume-other-algorithm.bin"
    earlier = seed_crashed_upload(s3, BUCKET, key, path.read_bytes(), (1, 2), algorithm="CRC32")
    client = s3_client(proxy.url)

    def names_no_algorithm(parsed, **_):
        parsed.pop("ChecksumAlgorithm", None)
        parsed.pop("ChecksumType", None)

    client.meta.events.register("after-call.s3.ListParts", names_no_algorithm)
    result = upload_file(client, path, BUCKET, key, part_size=PART, options=options(), resume_upload_id=earlier)
    head = s3.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    if result.checksum is not None:
        assert head.get(f"Checksum{result.checksum_algorithm}", "").split("-")[0] == result.checksum.split("-")[0]
    assert sha256_object(s3, BUCKET, key) == sha256_file(path)
    assert incomplete_uploads(s3, BUCKET, key) == []
