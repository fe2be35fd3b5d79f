"""The bandwidth cap: the token bucket on a fake clock (rate, burst, threads, cancel), and the part bodies
that draw from it."""

from __future__ import annotations

import threading

import pytest

from airflow_mpu_provider.multipart.bandwidth import (
    MAX_CHUNK,
    MIN_CHUNK,
    BandwidthLimit,
    ThrottledPartBody,
    _wait,
    bandwidth_limit,
    chunk_for,
    meter_only_what_is_sent,
)
from airflow_mpu_provider.multipart.checksums.digests import digest_part
from airflow_mpu_provider.multipart.errors import InvalidUploadRequest, UploadCancelledError
from airflow_mpu_provider.multipart.parts.body import PartBody
from airflow_mpu_provider.multipart.upload import MultipartUpload
from tests.conftest import MiB


class FakeClock:
    """Time that passes only when someone waits: each waiter moves it to the end of its own wait.

    Thread-safe; a thread's wait is measured from the time it last read, as a real sleep would be.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []
        self._lock = threading.Lock()
        self._seen = threading.local()

    def __call__(self) -> float:
        with self._lock:
            self._seen.now = self.now
            return self.now

    def wait(self, seconds: float, cancel: threading.Event | None) -> bool:
        if cancel is not None and cancel.is_set():
            return True
        with self._lock:
            self.waits.append(seconds)
            self.now = max(self.now, self._seen.now + seconds)
        return False

    def idle(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def limit(rate: int, burst: int | None = None) -> tuple[BandwidthLimit, FakeClock]:
    clock = FakeClock()
    return BandwidthLimit(rate, burst=burst, clock=clock, wait=clock.wait), clock


def test_starts_empty_so_n_bytes_take_at_least_n_over_rate():
    bucket, clock = limit(1000, burst=100)
    bucket.take(500)
    assert clock.now == pytest.approx(0.5)
    bucket.take(500)
    assert clock.now == pytest.approx(1.0)
    for _ in range(100):
        bucket.take(10)
    assert clock.now == pytest.approx(2.0)  # many small takes add up to the same rate


def test_after_an_idle_spell_only_the_burst_goes_at_once():
    bucket, clock = limit(1000, burst=100)
    bucket.take(1000)
    assert clock.now == pytest.approx(1.0)
    clock.idle(60)  # a minute of silence does not buy a minute of line rate
    bucket.take(100)
    assert clock.now == pytest.approx(61.0)  # the burst: no wait
    bucket.take(1000)
    assert clock.now == pytest.approx(62.0)  # then the rate again
    clock.idle(60)
    bucket.take(1100)  # burst + one second's worth
    assert clock.now == pytest.approx(123.0)


def test_default_burst_is_a_quarter_second_or_one_chunk_and_chunks_follow_the_rate():
    assert BandwidthLimit(32 * MiB).burst == 8 * MiB
    assert BandwidthLimit(32 * MiB).chunk == MAX_CHUNK
    assert chunk_for(1 * MiB) == 32 * 1024
    assert chunk_for(1000) == MIN_CHUNK
    assert BandwidthLimit(1000).burst == MIN_CHUNK  # never below one socket write


def test_zero_bytes_take_nothing():
    bucket, clock = limit(10)
    bucket.take(0)
    assert clock.now == 0 and clock.waits == []


def test_threads_share_the_rate_and_never_exceed_it():
    """8 threads x 200 takes on one bucket: by any moment, no more than rate x elapsed has been let through."""
    rate = 1_000_000
    bucket, clock = limit(rate, burst=10_000)
    released: list[tuple[float, int]] = []
    lock = threading.Lock()
    sizes = [1_000 + 997 * i % 9_000 for i in range(200)]

    def sender() -> None:
        for size in sizes:
            bucket.take(size)
            with lock:
                released.append((clock(), size))

    threads = [threading.Thread(target=sender) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    total = 8 * sum(sizes)
    assert sum(size for _, size in released) == total
    sent = 0
    for when, size in sorted(released):
        sent += size
        assert sent <= rate * when + 1e-6 * rate, (when, sent)
    assert clock.now >= total / rate - 1e-9  # no update lost under contention: every byte was paid for


def test_cancel_wakes_a_waiter_at_once():
    """A cancel must not wait for tokens: a thread waiting for 11 days' worth raises as soon as it is set."""
    cancel = threading.Event()
    waiting = threading.Event()
    outcome: list[BaseException] = []

    def wait(seconds: float, event: threading.Event | None) -> bool:
        waiting.set()
        return _wait(seconds, event)  # the real wait: on the cancel event

    bucket = BandwidthLimit(1, wait=wait)

    def sender() -> None:
        try:
            bucket.take(1_000_000, cancel)
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=sender)
    thread.start()
    assert waiting.wait(timeout=30)
    cancel.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], UploadCancelledError)


@pytest.mark.parametrize("value", [True, 1.5e7, 3.5, -1, 0, "32MiB"])
def test_bad_rates_are_refused(value):
    with pytest.raises(InvalidUploadRequest, match="max_bandwidth"):
        bandwidth_limit(value)


def test_no_rate_no_limit():
    assert bandwidth_limit(None) is None
    assert bandwidth_limit(5).rate == 5


# -- part bodies ------------------------------------------------------------------------------


class Recorder(BandwidthLimit):
    """A limit (64 KiB chunks) that lets everything through at once and records what was taken."""

    def __init__(self) -> None:
        super().__init__(1 * MiB)
        self.chunk = 64 * 1024
        self.taken: list[int] = []

    def take(self, size: int, cancel: threading.Event | None = None) -> None:
        self.taken.append(size)


def drain(body: PartBody, size: int = 8192) -> bytes:
    out = bytearray()
    while chunk := body.read(size):
        out += chunk
    return bytes(out)


def test_throttled_body_hands_out_chunks_and_pays_for_each_byte_sent():
    data = bytes(range(256)) * 1000
    recorder = Recorder()
    body = ThrottledPartBody(data, None, recorder)
    assert drain(body) == data
    assert set(recorder.taken[:-1]) == {recorder.chunk} and sum(recorder.taken) == len(data)
    body.seek(0)  # botocore rewinds for a retry: the bytes use the link again and are paid again
    assert drain(body, 1 * MiB) == data  # a large read is still cut into chunks
    assert sum(recorder.taken) == 2 * len(data) and max(recorder.taken) == recorder.chunk
    body.seek(0)
    body.metered = False  # the signer's pass
    assert drain(body) == data
    assert sum(recorder.taken) == 2 * len(data)
    body.metered = True
    body.seek(10)
    assert body.read() == data[10:]  # read-all callers get everything, paid in one go
    assert recorder.taken[-1] == len(data) - 10


def test_throttled_body_stops_on_cancel_and_the_end_is_no_error():
    cancel = threading.Event()
    body = ThrottledPartBody(b"x" * 1000, cancel, Recorder())
    cancel.set()
    with pytest.raises(UploadCancelledError):
        body.read(10)
    body.seek(0, 2)
    assert body.read(10) == b""


def _answer_locally(client, sent: dict):
    """Answer UploadPart in-process, reading the body as a socket would (nothing goes on the wire)."""
    from botocore.awsrequest import AWSResponse

    class Raw:
        def stream(self):
            yield b""

    def capture(request, **_):
        sent["authorization"] = request.headers.get("x-amz-content-sha256")
        sent["type"] = type(request.body)
        sent["body"] = drain(request.body) if hasattr(request.body, "read") else request.body
        return AWSResponse(request.url, 200, {"ETag": '"x"'}, Raw())

    client.meta.events.register("before-send.s3.UploadPart", capture)


def _client():
    import boto3

    return boto3.client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1")


def test_put_part_without_throttle_sends_the_plain_part_body():
    client = _client()
    sent: dict = {}
    _answer_locally(client, sent)
    data = b"d" * 4096
    upload = MultipartUpload(client, "b", "k", upload_id="u", checksum_algorithm="CRC32")
    upload.put_part(1, data, digest_part(1, data, algorithm="CRC32", with_md5=True))
    assert sent["type"] is PartBody and sent["body"] == data


@pytest.mark.parametrize("metered_send_only", [True, False])
def test_the_python_signers_hashing_pass_is_not_charged(monkeypatch, metered_send_only):
    """Without awscrt (BOTO_DISABLE_CRT) botocore's signer reads the body with ``read`` to SHA-256 it
    over plain HTTP; only the socket's pass may take bandwidth. Without the before-sign/before-send
    switch (the control case) both passes are charged, which shows the test sees the signer's reads."""
    import botocore.auth

    monkeypatch.setitem(botocore.auth.AUTH_TYPE_MAPS, "s3v4", botocore.auth.S3SigV4Auth)  # the Python signer
    client = _client()
    sent: dict = {}
    if metered_send_only:
        meter_only_what_is_sent(client)
    _answer_locally(client, sent)
    recorder = Recorder()
    data = bytes(range(256)) * 4096  # 1 MiB
    upload = MultipartUpload(client, "b", "k", upload_id="u", checksum_algorithm="CRC32")
    # No Content-MD5: the payload is SHA-256-signed over HTTP whatever the signing rules for MD5 parts.
    upload.put_part(1, data, digest_part(1, data, algorithm="CRC32", with_md5=False), throttle=recorder)
    assert sent["type"] is ThrottledPartBody and sent["body"] == data
    assert sent["authorization"] not in (None, "UNSIGNED-PAYLOAD")  # the signer did hash the body
    assert sum(recorder.taken) == (len(data) if metered_send_only else 2 * len(data))


# -- the engines ------------------------------------------------------------------------------


class BytesStream:
    description = "bytes in memory"

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def read(self, size: int) -> bytes:
        chunk, self._data = bytes(self._data[:size]), self._data[size:]
        return chunk

    def finish(self) -> None:
        pass


@pytest.fixture
def taken(monkeypatch) -> list[int]:
    """Every take of every BandwidthLimit, passed through at once (the rate is the integration tests' job)."""
    sizes: list[int] = []
    monkeypatch.setattr(BandwidthLimit, "take", lambda self, size, cancel=None: sizes.append(size))
    return sizes


@pytest.mark.parametrize("kind", ["file", "stream"])
def test_both_engines_pay_for_every_part_byte_and_only_once(mock_s3, tmp_path, taken, kind):
    from airflow_mpu_provider.multipart.file_engine import FileUploadEngine
    from airflow_mpu_provider.multipart.options import UploadOptions
    from airflow_mpu_provider.multipart.parts.plan import plan_parts
    from airflow_mpu_provider.multipart.sources.file import FileSource
    from airflow_mpu_provider.multipart.stream_engine import StreamUploadEngine
    from tests.conftest import make_file

    size = 12 * MiB
    options = UploadOptions(concurrency=3, max_bandwidth=32 * MiB, progress_interval=0)
    common = {"bucket": "test-bucket", "key": f"capped-{kind}", "options": options}
    if kind == "file":
        with FileSource(make_file(tmp_path / "f", size)) as source:
            result = FileUploadEngine(mock_s3, source=source, plan=plan_parts(size, 5 * MiB), **common).run()
    else:
        data = make_file(tmp_path / "f", size).read_bytes()
        result = StreamUploadEngine(mock_s3, stream=BytesStream(data), first_part_size=5 * MiB, **common).run()
    assert result.size == size and result.parts == 3
    assert sum(taken) == size


def test_no_cap_no_limit_and_a_bad_cap_is_refused_before_any_request(mock_s3):
    from airflow_mpu_provider.multipart.base_engine import BaseUploadEngine
    from airflow_mpu_provider.multipart.options import UploadOptions

    assert BaseUploadEngine(mock_s3, bucket="test-bucket", key="k", description="d").bandwidth is None
    for bad in (0, 2.5e7, True):
        with pytest.raises(InvalidUploadRequest, match="max_bandwidth"):
            BaseUploadEngine(
                None, bucket="test-bucket", key="k", description="d", options=UploadOptions(max_bandwidth=bad)
            )
