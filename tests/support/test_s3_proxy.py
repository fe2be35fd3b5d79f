"""Tests for the fault-injecting S3 reverse proxy (tests/support/s3_proxy.py)."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from tests.support.s3_proxy import Fault, KmsStore, RequestRecord, S3Proxy, classify, wait_until

BUCKET = "proxy-test"
MIB = 1024 * 1024


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture(scope="module")
def moto_url():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _ensure_bucket(moto_url: str) -> None:
    # ThreadedMotoServer shares moto's in-process backends with ``mock_aws()``, which other
    # tests may reset at any time: (re)create the bucket per test, directly on moto.
    direct = _client(moto_url)
    try:
        direct.head_bucket(Bucket=BUCKET)
    except botocore.exceptions.ClientError:
        direct.create_bucket(Bucket=BUCKET)


def _client(url: str, *, max_attempts: int = 5, **cfg):
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "max_attempts": max_attempts}, **cfg),
    )


@pytest.fixture
def proxy(moto_url):
    _ensure_bucket(moto_url)
    with S3Proxy(moto_url, seed=1234) as p:
        yield p


@pytest.fixture
def s3(proxy):
    return _client(proxy.url)


def _multipart(s3, key: str, parts: list[bytes], *, file_like: bool = True) -> str:
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    etags = []
    for number, data in enumerate(parts, start=1):
        body = io.BytesIO(data) if file_like else data
        resp = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
        etags.append({"ETag": resp["ETag"], "PartNumber": number})
    s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": etags})
    return upload_id


def _get(s3, key: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


# --------------------------------------------------------------------------------------
# moto-backed behaviour
# --------------------------------------------------------------------------------------


def test_put_get_roundtrip(proxy, s3):
    data = _payload(3 * MIB + 17, seed=1)
    s3.put_object(Bucket=BUCKET, Key="roundtrip/bytes", Body=data)
    s3.put_object(Bucket=BUCKET, Key="roundtrip/file", Body=io.BytesIO(data))
    head = s3.head_object(Bucket=BUCKET, Key="roundtrip/file")
    assert head["ContentLength"] == len(data)
    assert _sha(_get(s3, "roundtrip/bytes")) == _sha(data)
    assert _sha(_get(s3, "roundtrip/file")) == _sha(data)
    s3.delete_object(Bucket=BUCKET, Key="roundtrip/bytes")

    assert proxy.count("PutObject") == 2
    assert proxy.count("PutObject", status=200) == 2
    assert proxy.count("HeadObject", status=200) == 1
    assert proxy.count("GetObject", status=200) == 2
    assert proxy.count("DeleteObject", status=204) == 1
    puts = [r for r in proxy.requests() if r.kind == "PutObject"]
    assert [r.body_bytes for r in puts] == [len(data), len(data)]
    assert all(r.injected is None for r in proxy.requests())
    # the Host header reached the proxy as botocore signed it
    assert all(r.headers.get("host") == proxy.url.removeprefix("http://") for r in puts)
    # sequential requests of one client reuse a single keep-alive connection
    assert proxy.accepted_connections == 1


def test_multipart_counts(proxy, s3):
    parts = [_payload(5 * MIB, seed=i) for i in range(3)]
    upload_id = _multipart(s3, "mpu/three", parts)
    assert _sha(_get(s3, "mpu/three")) == _sha(b"".join(parts))

    assert proxy.count("CreateMultipartUpload") == 1
    assert proxy.count("UploadPart") == 3
    assert proxy.count("UploadPart", status=200) == 3
    assert proxy.count("CompleteMultipartUpload", status=200) == 1
    uploads = [r for r in proxy.requests() if r.kind == "UploadPart"]
    assert [r.part_number for r in uploads] == [1, 2, 3]
    assert {r.upload_id for r in uploads} == {upload_id}
    assert all(r.body_bytes == 5 * MIB for r in uploads)

    proxy.reset_counts()
    assert proxy.count("UploadPart") == 0
    s3.list_multipart_uploads(Bucket=BUCKET)
    assert proxy.count("ListMultipartUploads", status=200) == 1


@pytest.mark.parametrize("echo", [False, True])
def test_kms_store_gives_opaque_etags_and_still_completes(proxy, s3, echo):
    proxy.kms = KmsStore(echo_checksums=echo)
    parts = [_payload(5 * MIB, seed=7), b"tail"]
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key="kms/obj")["UploadId"]
    answers = [
        s3.upload_part(
            Bucket=BUCKET, Key="kms/obj", UploadId=upload_id, PartNumber=n, Body=data, ChecksumAlgorithm="CRC32"
        )
        for n, data in enumerate(parts, start=1)
    ]
    for answer, data in zip(answers, parts, strict=True):
        assert answer["ServerSideEncryption"] == "aws:kms"
        etag = answer["ETag"].strip('"')
        assert len(etag) == 32 and etag != hashlib.md5(data).hexdigest()  # looks like an MD5, is not one
        assert ("ChecksumCRC32" in answer) is echo
    listed = s3.list_parts(Bucket=BUCKET, Key="kms/obj", UploadId=upload_id)["Parts"]
    assert [p["ETag"] for p in listed] == [a["ETag"] for a in answers]  # the same opaque ETags
    assert echo or not any(k.startswith("Checksum") for p in listed for k in p)
    done = s3.complete_multipart_upload(  # the opaque ETags are mapped back on the way in
        Bucket=BUCKET,
        Key="kms/obj",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": a["ETag"]} for n, a in enumerate(answers, start=1)]},
    )
    md5s = b"".join(hashlib.md5(d).digest() for d in parts)
    assert done["ETag"] != f'"{hashlib.md5(md5s).hexdigest()}-2"' and done["ETag"].endswith('-2"')
    head = s3.head_object(Bucket=BUCKET, Key="kms/obj")
    assert (head["ServerSideEncryption"], head["ETag"]) == ("aws:kms", done["ETag"])
    assert _get(s3, "kms/obj") == b"".join(parts)


def test_slowdown_error_is_retried(proxy, s3):
    fault = Fault("UploadPart", "error", status=503, code="SlowDown", times=2)
    proxy.add_fault(fault)
    parts = [_payload(5 * MIB, seed=10), _payload(1 * MIB, seed=11)]
    _multipart(s3, "mpu/slowdown", parts)
    assert _sha(_get(s3, "mpu/slowdown")) == _sha(b"".join(parts))

    assert proxy.count("UploadPart", status=503) == 2
    assert proxy.count("UploadPart", status=200) == 2
    assert proxy.count("UploadPart") == 4
    assert proxy.injections(fault) == 2
    injected = [r for r in proxy.requests() if r.injected]
    assert [(r.kind, r.injected, r.status) for r in injected] == [("UploadPart", "error", 503)] * 2
    # botocore sent Expect: 100-continue and got the 503 instead of "100 Continue": no body was sent
    assert all(r.expect_continue and r.body_bytes == 0 for r in injected)


def test_error_without_expect_drains_body_and_keeps_connection(proxy, s3):
    proxy.add_fault(Fault("CompleteMultipartUpload", "error", status=500, times=1))
    parts = [_payload(5 * MIB, seed=12)]
    _multipart(s3, "mpu/complete-500", parts)
    assert _sha(_get(s3, "mpu/complete-500")) == _sha(parts[0])
    completes = [r for r in proxy.requests() if r.kind == "CompleteMultipartUpload"]
    assert [(r.status, r.injected) for r in completes] == [(500, "error"), (200, None)]
    assert completes[0].body_bytes == completes[1].body_bytes > 0
    assert proxy.accepted_connections == 1


def test_reset_is_retried(proxy, s3):
    proxy.add_fault(Fault("UploadPart", "reset", times=1, after_bytes=64 * 1024))
    parts = [_payload(5 * MIB, seed=20), _payload(5 * MIB, seed=21)]
    _multipart(s3, "mpu/reset", parts)
    assert _sha(_get(s3, "mpu/reset")) == _sha(b"".join(parts))

    uploads = [r for r in proxy.requests() if r.kind == "UploadPart"]
    assert [(r.part_number, r.status, r.injected) for r in uploads] == [
        (1, 0, "reset"),
        (1, 200, None),
        (2, 200, None),
    ]
    assert 64 * 1024 <= uploads[0].body_bytes < 5 * MIB
    assert proxy.count("UploadPart", status=200) == 2


def test_reset_with_plain_bytes_body(proxy, s3):
    proxy.add_fault(Fault("PutObject", "reset", times=1, after_bytes=1000))
    data = _payload(2 * MIB, seed=22)
    s3.put_object(Bucket=BUCKET, Key="reset/put", Body=data)
    assert _sha(_get(s3, "reset/put")) == _sha(data)
    assert [(r.status, r.injected) for r in proxy.requests() if r.kind == "PutObject"] == [(0, "reset"), (200, None)]


def test_error_200_on_complete_is_retried(proxy, s3):
    proxy.add_fault(Fault("CompleteMultipartUpload", "error_200", times=1))
    parts = [_payload(5 * MIB, seed=30), _payload(123, seed=31)]
    _multipart(s3, "mpu/error200", parts)
    assert _sha(_get(s3, "mpu/error200")) == _sha(b"".join(parts))

    completes = [r for r in proxy.requests() if r.kind == "CompleteMultipartUpload"]
    # both answered 200 to the client; the first one carried an <Error> body
    assert [(r.status, r.injected) for r in completes] == [(200, "error_200"), (200, None)]
    assert proxy.count("CompleteMultipartUpload", status=200) == 2


def test_error_200_not_applied_to_failed_upstream_response(proxy, s3):
    fault = Fault("HeadObject", "error_200", times=1)
    proxy.add_fault(fault)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.head_object(Bucket=BUCKET, Key="does/not/exist")
    assert info.value.response["Error"]["Code"] == "404"
    assert proxy.injections(fault) == 0  # upstream said 404: nothing replaced, budget kept
    assert proxy.requests()[-1].injected is None


def test_set_down_and_up(proxy):
    client = _client(proxy.url, max_attempts=1, connect_timeout=1, read_timeout=2)
    client.put_object(Bucket=BUCKET, Key="down/before", Body=b"before")  # pooled keep-alive connection
    proxy.set_down(True)
    with pytest.raises((botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
        client.put_object(Bucket=BUCKET, Key="down/during", Body=b"during")  # reused connection -> RST
    with pytest.raises((botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
        client.head_object(Bucket=BUCKET, Key="down/before")  # new connection -> RST
    assert proxy.refused_connections >= 1
    assert proxy.count("PutObject") == 1
    assert proxy.count("HeadObject") == 0

    proxy.set_down(False)
    client.put_object(Bucket=BUCKET, Key="down/after", Body=b"after")
    assert _get(client, "down/after") == b"after"
    assert _get(client, "down/before") == b"before"
    with pytest.raises(botocore.exceptions.ClientError):
        client.head_object(Bucket=BUCKET, Key="down/during")


def test_delay_and_on_request_hook(proxy, s3):
    s3.put_object(Bucket=BUCKET, Key="delay/obj", Body=b"x")
    seen: list[RequestRecord] = []
    proxy.on_request = seen.append
    proxy.add_fault(Fault("HeadObject", "delay", delay=0.3, times=1))
    t0 = time.monotonic()
    s3.head_object(Bucket=BUCKET, Key="delay/obj")
    assert time.monotonic() - t0 >= 0.3  # a lower bound: no busy machine can make it flake
    s3.head_object(Bucket=BUCKET, Key="delay/obj")  # times=1: the second request is not delayed...
    assert [(r.kind, r.status, r.injected) for r in seen] == [("HeadObject", 200, "delay"), ("HeadObject", 200, None)]


def test_throttle_relays_the_body_at_the_rate_intact_and_counts_it_in_flight(proxy, s3):
    data = _payload(3 * MIB, seed=80)
    fault = Fault("PutObject", "throttle", rate=1 * MIB, times=1)
    proxy.add_fault(fault)
    assert proxy.in_flight("PutObject") == 0
    elapsed: list[float] = []

    def put() -> None:
        t0 = time.monotonic()
        s3.put_object(Bucket=BUCKET, Key="throttle/obj", Body=io.BytesIO(data))
        elapsed.append(time.monotonic() - t0)

    sender = threading.Thread(target=put)
    sender.start()
    assert proxy.wait_in_flight("PutObject", 1, timeout=30)
    sender.join(60)
    assert elapsed, "the throttled PUT did not finish"
    assert elapsed[0] >= 2.5  # 3 MiB at 1 MiB/s; a busy machine can only make it slower
    # The client has its answer a moment before the proxy's thread counts the request as done.
    assert wait_until(lambda: proxy.in_flight("PutObject") == 0, timeout=30)
    assert proxy.injections(fault) == 1
    assert _sha(_get(s3, "throttle/obj")) == _sha(data)
    s3.put_object(Bucket=BUCKET, Key="throttle/obj", Body=io.BytesIO(data))  # times=1: not throttled again
    puts = [r for r in proxy.requests() if r.kind == "PutObject"]
    assert [(r.status, r.injected, r.body_bytes) for r in puts] == [
        (200, "throttle", len(data)),
        (200, None, len(data)),
    ]


def test_throttled_upload_parts_are_in_flight_together_and_stop_ends_them(proxy):
    client = _client(proxy.url, max_attempts=1, read_timeout=120)
    proxy.add_fault(Fault("UploadPart", "throttle", rate=64 * 1024))  # 5 MiB would take 80 s each
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key="throttle/parts")["UploadId"]
    errors: list[BaseException] = []

    def send(number: int) -> None:
        try:
            body = io.BytesIO(_payload(5 * MIB, seed=number))
            client.upload_part(Bucket=BUCKET, Key="throttle/parts", UploadId=upload_id, PartNumber=number, Body=body)
        except Exception as e:
            errors.append(e)

    senders = [threading.Thread(target=send, args=(n,)) for n in (1, 2, 3)]
    for t in senders:
        t.start()
    try:
        assert proxy.wait_in_flight("UploadPart", 3, timeout=30)
        assert proxy.count("UploadPart") == 0  # none answered yet: they are all still trickling in
    finally:
        t0 = time.monotonic()
        proxy.stop()
        for t in senders:
            t.join(30)
    assert time.monotonic() - t0 < 10  # not the 80 s the bodies would take
    assert not any(t.is_alive() for t in senders)
    assert len(errors) == 3
    _client(proxy.upstream).abort_multipart_upload(Bucket=BUCKET, Key="throttle/parts", UploadId=upload_id)


def test_hook_can_take_proxy_down_after_n_parts(proxy):
    client = _client(proxy.url, max_attempts=1, connect_timeout=1, read_timeout=2)

    def hook(rec: RequestRecord) -> None:
        if rec.kind == "UploadPart" and proxy.count("UploadPart", status=200) >= 2:
            proxy.set_down(True)

    proxy.on_request = hook
    parts = [_payload(1 * MIB, seed=40 + i) for i in range(4)]
    with pytest.raises((botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
        _multipart(client, "mpu/killed", parts)
    assert proxy.count("UploadPart", status=200) == 2
    assert proxy.hook_errors == []


def test_concurrent_parts_with_faults(proxy, s3):
    from concurrent.futures import ThreadPoolExecutor

    proxy.add_fault(Fault("UploadPart", "error", status=500, times=3))
    proxy.add_fault(Fault("UploadPart", "reset", times=2, after_bytes=10_000))
    parts = [_payload(5 * MIB, seed=70 + i) for i in range(8)]
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key="mpu/concurrent")["UploadId"]

    def upload(number: int) -> dict:
        body = io.BytesIO(parts[number - 1])
        etag = s3.upload_part(Bucket=BUCKET, Key="mpu/concurrent", UploadId=upload_id, PartNumber=number, Body=body)
        return {"ETag": etag["ETag"], "PartNumber": number}

    with ThreadPoolExecutor(max_workers=8) as pool:
        done = list(pool.map(upload, range(1, 9)))
    s3.complete_multipart_upload(
        Bucket=BUCKET, Key="mpu/concurrent", UploadId=upload_id, MultipartUpload={"Parts": done}
    )
    assert _sha(_get(s3, "mpu/concurrent")) == _sha(b"".join(parts))
    assert proxy.count("UploadPart", status=200) == 8
    assert proxy.count("UploadPart", status=500) == 3
    assert proxy.count("UploadPart", status=0) == 2
    assert proxy.count("UploadPart") == 13
    ok = [r for r in proxy.requests() if r.kind == "UploadPart" and r.status == 200]
    assert sorted(r.part_number for r in ok) == list(range(1, 9))
    assert all(r.body_bytes == 5 * MIB for r in ok)


def test_probability_is_seeded_and_deterministic(moto_url):
    _ensure_bucket(moto_url)

    def pattern(seed: int) -> list[int]:
        with S3Proxy(moto_url, seed=seed) as p:
            client = _client(p.url, max_attempts=1)
            p.add_fault(Fault("ListMultipartUploads", "error", status=500, probability=0.5))
            for _ in range(16):
                with contextlib.suppress(botocore.exceptions.ClientError):
                    client.list_multipart_uploads(Bucket=BUCKET)
            return [r.status for r in p.requests()]

    first, second, other = pattern(7), pattern(7), pattern(8)
    assert first == second
    assert set(first) == {200, 500}
    assert first != other


def test_times_bounds_injections(proxy, s3):
    proxy.add_fault(Fault("ListMultipartUploads", "error", status=503, code="SlowDown", times=1))
    s3.list_multipart_uploads(Bucket=BUCKET)
    s3.list_multipart_uploads(Bucket=BUCKET)
    assert [r.status for r in proxy.requests()] == [503, 200, 200]
    proxy.add_fault(Fault("ListMultipartUploads", "error", times=5))
    proxy.clear_faults()
    s3.list_multipart_uploads(Bucket=BUCKET)
    assert proxy.count("ListMultipartUploads", status=200) == 3


def test_chunked_put_reaches_moto(proxy, s3):
    data = _payload(3 * MIB + 5, seed=50)
    host, port = proxy.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("PUT", f"/{BUCKET}/chunked/raw", skip_accept_encoding=True)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for i in range(0, len(data), 700_000):
        piece = data[i : i + 700_000]
        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    conn.send(b"0\r\n\r\n")
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 200
    assert _sha(_get(s3, "chunked/raw")) == _sha(data)
    rec = next(r for r in proxy.requests() if r.kind == "PutObject")
    assert rec.chunked and rec.body_bytes == len(data)


# --------------------------------------------------------------------------------------
# wire-level behaviour against a stdlib echo upstream
# --------------------------------------------------------------------------------------


class _EchoHandler(BaseHTTPRequestHandler):
    """Echoes what it received: request line, raw headers and a hash of the raw body."""

    protocol_version = "HTTP/1.1"

    def _raw_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            raw = bytearray()
            while True:
                line = self.rfile.readline()
                raw += line
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while True:
                        t = self.rfile.readline()
                        raw += t
                        if t == b"\r\n":
                            return bytes(raw)
                raw += self.rfile.read(size + 2)
        h = hashlib.sha256()
        left = int(self.headers.get("Content-Length") or 0)
        self.length = left
        while left:
            piece = self.rfile.read(min(left, MIB))
            h.update(piece)
            left -= len(piece)
        self.digest = h.hexdigest()
        return b""

    def _answer(self) -> None:
        self.length, self.digest = 0, _sha(b"")
        raw = self._raw_body()
        if raw:
            self.length, self.digest = len(raw), _sha(raw)
        body = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": list(self.headers.items()),
                "body_len": self.length,
                "body_sha": self.digest,
                "raw": raw.decode("latin-1") if len(raw) < 4096 else "",
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.path.endswith("/chunked-response"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 10):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(body[i : i + 10]), body[i : i + 10]))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def echo_proxy():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    with S3Proxy(f"http://127.0.0.1:{server.server_address[1]}") as p:
        yield p
    server.shutdown()
    server.server_close()


def _raw_exchange(url: str, request: bytes, body: bytes | None = None) -> tuple[bytes, bytes]:
    """Send ``request`` head, read the first response head; send ``body`` only after 100 Continue."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        f = sock.makefile("rb")
        first = f.readline()
        while f.readline() not in (b"\r\n", b""):
            pass
        if first.startswith(b"HTTP/1.1 100") and body is not None:
            sock.sendall(body)
            final = f.readline()
            head = final
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                head += line
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            return first, head + b"\r\n" + f.read(length)
        return first, b""


def test_host_header_and_headers_forwarded_verbatim(echo_proxy):
    host, port = echo_proxy.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.putrequest("PUT", "/bucket/key%20x?partNumber=2&uploadId=abc", skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", "Signed-Host.example:9999")
    conn.putheader("X-Amz-Date", "20240101T000000Z")
    conn.putheader("x-amz-meta-MixedCase", "v a l")
    conn.putheader("Content-Length", "5")
    conn.endheaders(b"hello")
    echoed = json.loads(conn.getresponse().read())
    assert echoed["path"] == "/bucket/key%20x?partNumber=2&uploadId=abc"
    assert echoed["headers"][:4] == [
        ["Host", "Signed-Host.example:9999"],
        ["X-Amz-Date", "20240101T000000Z"],
        ["x-amz-meta-MixedCase", "v a l"],
        ["Content-Length", "5"],
    ]
    assert echoed["body_sha"] == _sha(b"hello")
    # virtual-hosted style Host: bucket comes from the host, so "/bucket/key x" is the key
    rec = echo_proxy.requests()[0]
    assert (rec.kind, rec.part_number, rec.upload_id, rec.body_bytes) == ("UploadPart", 2, "abc", 5)


def test_chunked_request_relayed_verbatim_and_chunked_response_rechunked(echo_proxy):
    host, port = echo_proxy.url.removeprefix("http://").split(":")
    raw_body = b"5;chunk-signature=abc\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    for _ in range(2):  # twice on one keep-alive connection
        conn.putrequest("PUT", "/b/k/chunked-response", skip_accept_encoding=True)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.putheader("Content-Encoding", "aws-chunked")
        conn.putheader("x-amz-trailer", "x-amz-checksum-crc32")
        conn.endheaders()
        conn.send(raw_body)
        resp = conn.getresponse()
        assert resp.getheader("Transfer-Encoding") == "chunked"
        echoed = json.loads(resp.read())
        assert echoed["raw"].encode("latin-1") == raw_body
    assert [(r.kind, r.chunked, r.body_bytes) for r in echo_proxy.requests()] == [("PutObject", True, 11)] * 2
    assert echo_proxy.accepted_connections == 1


def test_expect_100_continue_handling(echo_proxy):
    body = b"x" * 1000
    head = b"PUT /b/k HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
    first, final = _raw_exchange(echo_proxy.url, head, body)
    assert first.startswith(b"HTTP/1.1 100")
    assert final.startswith(b"HTTP/1.1 200")
    echoed = json.loads(final.split(b"\r\n\r\n", 1)[1])
    assert echoed["body_sha"] == _sha(body)
    assert not any(k.lower() == "expect" for k, _ in echoed["headers"])

    # an injected error is the final answer instead of 100 Continue, and the connection closes
    echo_proxy.add_fault(Fault("PutObject", "error", status=503, code="SlowDown", times=1))
    host, port = echo_proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Connection: close" in data
    assert b"<Code>SlowDown</Code>" in data
    assert echo_proxy.requests()[-1].body_bytes == 0


def test_large_streamed_body(echo_proxy):
    block = _payload(MIB, seed=60)
    total = 100 * MIB
    host, port = echo_proxy.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("PUT", "/b/big", body=(block for _ in range(100)), headers={"Content-Length": str(total)})
    echoed = json.loads(conn.getresponse().read())
    assert echoed["body_len"] == total
    assert echoed["body_sha"] == hashlib.sha256(block * 100).hexdigest()
    assert echo_proxy.requests()[0].body_bytes == total


def test_stop_unblocks_idle_keepalive_connections(echo_proxy):
    host, port = echo_proxy.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", "/b/k")
    conn.getresponse().read()
    stopping = threading.Thread(target=echo_proxy.stop)
    stopping.start()
    stopping.join(timeout=30)  # an idle keep-alive connection would block it for good, not for a while
    assert not stopping.is_alive()
    assert wait_until(lambda: not echo_proxy_thread_alive(), timeout=30)


def echo_proxy_thread_alive() -> bool:
    return any(t.name.startswith("s3-proxy-") and t.is_alive() for t in threading.enumerate())


# --------------------------------------------------------------------------------------
# pure unit tests
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "kind"),
    [
        ("POST", "/b/k?uploads", "CreateMultipartUpload"),
        ("PUT", "/b/k?partNumber=1&uploadId=u", "UploadPart"),
        ("POST", "/b/k?uploadId=u", "CompleteMultipartUpload"),
        ("DELETE", "/b/k?uploadId=u", "AbortMultipartUpload"),
        ("GET", "/b/k?uploadId=u", "ListParts"),
        ("GET", "/b?uploads", "ListMultipartUploads"),
        ("GET", "/b/?uploads", "ListMultipartUploads"),
        ("HEAD", "/b/k", "HeadObject"),
        ("GET", "/b/k", "GetObject"),
        ("GET", "/b/k?partNumber=2", "GetObject"),
        ("PUT", "/b/k/with/slashes", "PutObject"),
        ("DELETE", "/b/k", "DeleteObject"),
        ("PUT", "/b", "CreateBucket"),
        ("GET", "/b/k?tagging", "Other"),
        ("HEAD", "/b", "Other"),
        ("GET", "/", "Other"),
        ("POST", "/b?delete", "Other"),
    ],
)
def test_classify(method, target, kind):
    from urllib.parse import parse_qsl

    path, _, q = target.partition("?")
    assert classify(method, path, dict(parse_qsl(q, keep_blank_values=True)), "127.0.0.1:1234") == kind


def test_classify_virtual_host():
    assert classify("PUT", "/", {}, "bucket.localhost:9000") == "CreateBucket"
    assert classify("GET", "/key", {}, "bucket.localhost:9000") == "GetObject"


def test_rejects_non_loopback_upstream_and_bad_faults():
    for bad in ("http://10.0.0.1:80", "http://example.com:80", "https://127.0.0.1:443", "http://127.0.0.1"):
        with pytest.raises(ValueError):
            S3Proxy(bad)
    with pytest.raises(ValueError):
        Fault("UploadPart", "explode")
    with pytest.raises(ValueError):
        Fault("UploadParts", "error")
    with pytest.raises(ValueError):
        Fault("UploadPart", "error", probability=1.5)
    with pytest.raises(ValueError, match="rate"):
        Fault("UploadPart", "throttle")
    with pytest.raises(ValueError, match="rate"):
        Fault("UploadPart", "delay", rate=1000)
