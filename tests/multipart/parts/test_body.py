"""A part's body: large reads, a cancel that stops it mid-part, and a cancel botocore never retries."""

from __future__ import annotations

import io
import threading

import boto3
import pytest
from botocore.exceptions import ConnectionClosedError, HTTPClientError

from airflow_mpu_provider.multipart.errors import UploadCancelledError
from airflow_mpu_provider.multipart.parts.body import PartBody, _cancellation_in, never_retry_cancelled_parts
from airflow_mpu_provider.multipart.units import MiB


def test_part_body_reads_large_chunks_and_stops_on_cancel():
    cancel = threading.Event()
    body = PartBody(b"x" * (3 * MiB), cancel)
    assert len(body) == 3 * MiB
    assert len(body.read(8192)) == 1 * MiB  # large writes, not 8 KiB ones
    body.seek(0, io.SEEK_END)
    assert body.tell() == 3 * MiB
    body.seek(0)
    buf = bytearray(10)
    assert body.readinto(buf) == 10
    cancel.set()
    with pytest.raises(UploadCancelledError):
        body.read(10)
    body.seek(0, io.SEEK_END)
    assert body.read(10) == b""  # nothing left to send: the end is not an error, whatever the cancel


def test_a_body_reads_all_as_real_bytes_and_shares_the_callers_buffer():
    data = b"0123456789" * 1000
    body = PartBody(data)
    assert body.read() == data and isinstance(body.read(), bytes)  # read-all callers get bytes
    body.seek(0)
    assert isinstance(body.read(5), memoryview)  # the socket path: no copy
    assert not body.cancelled  # no cancel event: never cancelled


def _wrapped_as_botocore_does(cancellation: UploadCancelledError) -> HTTPClientError:
    try:
        raise cancellation
    except UploadCancelledError as e:
        try:
            raise HTTPClientError(error=e)
        except HTTPClientError as wrapped:
            return wrapped


def test_the_cancellation_is_found_however_it_is_wrapped():
    cancellation = UploadCancelledError("stop")
    assert _cancellation_in(cancellation) is cancellation
    assert _cancellation_in(HTTPClientError(error=cancellation)) is cancellation  # kwargs["error"]
    assert _cancellation_in(_wrapped_as_botocore_does(cancellation)) is cancellation
    caused = RuntimeError("outer")
    caused.__cause__ = OSError("middle")
    caused.__cause__.__context__ = cancellation
    assert _cancellation_in(caused) is cancellation
    assert _cancellation_in(ConnectionError("a real network error")) is None
    assert _cancellation_in(None) is None


def test_a_cycle_of_causes_ends_the_search():
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__context__, second.__context__ = second, first
    assert _cancellation_in(first) is None


def _needs_retry(client, **kwargs):
    """Emit botocore's retry decision for UploadPart, as its endpoint does after a failed attempt."""
    operation = client.meta.service_model.operation_model("UploadPart")
    return client.meta.events.emit("needs-retry.s3.UploadPart", response=None, operation=operation, **kwargs)


@pytest.fixture
def client():
    client = boto3.client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")
    never_retry_cancelled_parts(client)
    never_retry_cancelled_parts(client)  # registered once, however many uploads share the client
    return client


def test_a_cancelled_part_is_re_raised_before_any_retry_handler_decides(client):
    cancellation = UploadCancelledError("stop")
    with pytest.raises(UploadCancelledError) as info:
        _needs_retry(client, caught_exception=HTTPClientError(error=cancellation), request_dict={}, attempts=1)
    assert info.value is cancellation


def test_a_network_error_on_a_cancelled_body_is_not_retried_either(client):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(UploadCancelledError) as info:
        _needs_retry(
            client,
            caught_exception=ConnectionResetError("peer closed"),
            request_dict={"body": PartBody(b"x", cancel)},
            attempts=1,
        )
    assert isinstance(info.value.__cause__, ConnectionResetError)


def test_other_errors_keep_the_clients_retries(client):
    live = PartBody(b"x", threading.Event())
    answers = _needs_retry(
        client,
        caught_exception=ConnectionClosedError(endpoint_url="http://127.0.0.1:9"),
        request_dict={"body": live, "context": {}},
        attempts=1,
    )
    delays = [answer for _, answer in answers if answer is not None]
    assert delays and delays[0] >= 0  # botocore's own retry handler decided: retry after this delay


class Meter:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def sent(self, new: int, resent: int) -> None:
        self.calls.append((new, resent))


def test_reads_are_reported_as_they_go_out_and_a_retry_as_resent_bytes():
    """Issue #20: progress in bytes as the HTTP layer reads the body; a rewound body is resent, not new."""
    meter = Meter()
    body = PartBody(b"x" * (3 * MiB), meter=meter)
    buf = bytearray(8192)
    body.readinto(buf)  # awscrt's signer hashing the body: not on the wire, not reported
    body.seek(0)
    assert len(body.read(8192)) == 1 * MiB
    assert meter.calls == [(1 * MiB, 0)]
    body.seek(0)  # botocore rewinds the body to retry the request
    while body.read(8192):
        pass
    assert meter.calls == [(1 * MiB, 0), (0, 1 * MiB), (1 * MiB, 0), (1 * MiB, 0)]
    body.metered = False  # botocore's own signer reading it between before-sign and before-send
    body.seek(0)
    body.read()
    assert sum(new for new, _ in meter.calls) == 3 * MiB and len(meter.calls) == 4


def test_a_bytearray_or_a_view_of_one_is_sent_without_a_copy():
    """A stream's part is read into a bytearray: a BytesIO over it would copy the whole part."""
    data = bytearray(b"abc" * 1000)
    body = PartBody(memoryview(data)[:2000])
    assert len(body) == 2000
    piece = body.read(10)
    assert isinstance(piece, memoryview) and piece.obj is data  # a view of the caller's buffer
    data[0:1] = b"Z"
    body.seek(0)
    target = bytearray(4)
    assert body.readinto(target) == 4 and target == b"Zbca"
    body.seek(0, io.SEEK_END)
    assert body.tell() == 2000 and body.read(10) == b""
