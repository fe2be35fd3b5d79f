"""A small fault-injecting HTTP reverse proxy for S3 integration tests.

The proxy listens on ``127.0.0.1`` (a free port) and forwards every request to a
single upstream S3 endpoint on the loopback interface (typically a moto server).
It classifies each request into an S3 operation *kind*, records it, and can inject
faults (error responses, TCP resets, delays, bandwidth throttling and the S3 "200 OK
with an error in the body" case) deterministically from a seeded ``random.Random``.

Wire behaviour (standard library only):

* Client connections are persistent (HTTP/1.1 keep-alive), one thread per connection.
* ``Expect: 100-continue`` is handled by the proxy itself: the ``100 Continue``
  interim response is only sent once the proxy has decided to read the body
  (i.e. after fault selection and after the upstream connection is open), so an
  injected ``error`` is returned as the final response *instead of* ``100 Continue``
  (RFC 9110 allows this; botocore then never sends the body, so the proxy closes
  the connection after the error).  Without ``Expect`` the body is drained first
  and the connection stays usable.  The ``Expect`` header itself is not forwarded upstream.
* Request bodies are streamed through in 1 MiB pieces, never buffered whole. A
  ``throttle`` fault reads the body from the client at ``rate`` bytes/s instead (in
  pieces of 1/20 s), so the client's sends block as on a slow link.
  ``Content-Length`` bodies are relayed as is; ``Transfer-Encoding: chunked``
  (including ``Content-Encoding: aws-chunked`` payloads) is relayed verbatim,
  chunk framing and trailers included.
* Every request header is forwarded byte-for-byte in its original order and
  spelling (in particular ``Host``, which SigV4 signs), except hop-by-hop headers
  (``Connection``, ``Keep-Alive``, ``Proxy-*``, ``TE``, ``Upgrade``, ``Expect``).
  A fresh upstream connection is used per request (``Connection: close``).
* Responses are streamed back; upstream ``Content-Length`` is kept, a chunked or
  close-delimited upstream body is re-chunked for the client.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import logging
import random
import re
import socket
import struct
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer

log = logging.getLogger(__name__)

__all__ = ["ACTIONS", "KINDS", "Fault", "KmsStore", "RequestRecord", "S3Proxy", "classify"]

KINDS = (
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
    "ListParts",
    "ListMultipartUploads",
    "HeadObject",
    "GetObject",
    "PutObject",
    "DeleteObject",
    "CreateBucket",
    "Other",
)
ACTIONS = ("error", "reset", "delay", "error_200", "throttle")

_CHUNK = 1024 * 1024
_MAX_LINE = 65536
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "upgrade",
        "expect",
    }
)
# Responses are re-framed by the proxy, so framing headers from upstream are dropped too.
_RESPONSE_DROP = _HOP_BY_HOP | {"transfer-encoding", "trailer"}
_ERROR_MESSAGES = {
    "InternalError": "We encountered an internal error. Please try again.",
    "SlowDown": "Please reduce your request rate.",
    "ServiceUnavailable": "Service is unable to handle request.",
    "RequestTimeout": "Your socket connection to the server was not read from or written to within the timeout period.",
}
# Sub-resources that turn an object/bucket request into "some other" operation.
_OBJECT_SUBRESOURCES = frozenset(
    {
        "acl",
        "tagging",
        "legal-hold",
        "retention",
        "torrent",
        "restore",
        "select",
        "attributes",
        "uploads",
        "uploadId",
    }
)


@dataclass
class Fault:
    """A fault to inject into requests of one kind (see module docstring)."""

    kind: str
    action: str
    status: int = 500
    code: str = "InternalError"
    probability: float = 1.0
    times: int | None = None
    delay: float = 0.0
    after_bytes: int = 65536
    rate: int = 0  # throttle: request body bytes per second read from the client (per request)
    skip: int = 0  # let this many requests of ``kind`` through (in order of arrival) before the fault applies
    #: Apply only to a request arriving while more than this many of ``kind`` are in flight (itself included):
    #: a store that answers SlowDown to a client sending more than N parts at once. None: always.
    above_in_flight: int | None = None
    #: The error's <Message> (None: a stock message for ``code``), e.g. Swift's "...: 503 Service Unavailable".
    message: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown request kind {self.kind!r}; expected one of {KINDS}")
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}; expected one of {ACTIONS}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        if self.times is not None and self.times < 0:
            raise ValueError("times must be >= 0 or None")
        if self.delay < 0 or self.after_bytes < 0 or self.skip < 0:
            raise ValueError("delay, after_bytes and skip must be >= 0")
        if not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status code")
        if (self.action == "throttle") != (self.rate > 0):
            raise ValueError("rate (bytes/s, > 0) is required by throttle faults and only by them")


@dataclass(eq=False)
class _ArmedFault:
    """A fault added to the proxy, with what it has done so far (guarded by the proxy's lock)."""

    fault: Fault
    applied: int = 0  # times it fired (an error_200 that upstream failed by itself gives its turn back)
    skipped: int = 0  # requests of its kind let through before it applies (``Fault.skip``)


@dataclass
class RequestRecord:
    """One request seen (and answered, or reset) by the proxy."""

    kind: str
    method: str
    path: str
    query: dict[str, str]
    part_number: int | None
    upload_id: str | None
    status: int  # status returned to the client; 0 if the connection was reset / broke
    body_bytes: int  # request payload bytes received from the client (de-chunked)
    injected: str | None  # fault action applied, or None
    # Extras (defaulted so positional construction with the fields above keeps working):
    expect_continue: bool = False  # the client sent "Expect: 100-continue"
    chunked: bool = False  # the client sent "Transfer-Encoding: chunked"
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # client request headers (last wins)


class KmsStore:
    """Make the upstream look like S3 with SSE-KMS (e.g. a bucket's default encryption), which moto is not.

    * Every successful answer about an object says ``x-amz-server-side-encryption: aws:kms``.
    * ETags are opaque: each MD5 the upstream reports (UploadPart, HeadObject, ListParts, Complete) is
      replaced by another 32-hex-digit value, exactly as S3's SSE-KMS ETags look: like an MD5, but not
      the MD5 of the bytes. The CompleteMultipartUpload request's ETags are mapped back on the way in,
      so the upstream still completes.
    * ``echo_checksums=False``: answers carry no ``x-amz-checksum-*`` headers or ``<Checksum...>``
      elements (a store that echoes nothing); True: UploadPart answers echo the request's checksum
      header, as AWS does.
    """

    _HEX = re.compile(rb"[0-9a-fA-F]{32}")
    _ETAG_ELEMENT = re.compile(rb"(<ETag>)(.*?)(</ETag>)", re.S)
    _CHECKSUM_ELEMENT = re.compile(rb"<Checksum(CRC32C|CRC32|CRC64NVME|SHA1|SHA256|Type)>.*?</Checksum\1>", re.S)
    OBJECT_KINDS = frozenset(
        {"CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "HeadObject", "GetObject", "PutObject"}
    )

    def __init__(self, *, echo_checksums: bool) -> None:
        self.echo_checksums = echo_checksums
        self._real: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    def opaque(self, md5_hex: bytes) -> bytes:
        fake = hashlib.md5(b"kms-ciphertext:" + md5_hex.lower(), usedforsecurity=False).hexdigest().encode()
        with self._lock:
            self._real[fake] = md5_hex
        return fake

    def real(self, etag_hex: bytes) -> bytes:
        with self._lock:
            return self._real.get(etag_hex.lower(), etag_hex)

    def real_etag_header(self, value: str) -> str:
        """An If-Match header naming an opaque ETag, as the upstream knows the object."""
        return self._HEX.sub(lambda h: self.real(h.group(0)), value.encode()).decode()

    def _map_etags(self, body: bytes, convert: Callable[[bytes], bytes]) -> bytes:
        return self._ETAG_ELEMENT.sub(
            lambda m: m.group(1) + self._HEX.sub(lambda h: convert(h.group(0)), m.group(2)) + m.group(3), body
        )

    def request_body(self, kind: str, body: bytes) -> bytes:
        return self._map_etags(body, self.real) if kind == "CompleteMultipartUpload" else body

    def response_headers(
        self, kind: str, headers: list[tuple[str, str]], request_headers: dict[str, str]
    ) -> list[tuple[str, str]]:
        out = []
        for name, value in headers:
            lname = name.lower()
            if lname == "etag" and kind in self.OBJECT_KINDS:
                value = re.sub(r"[0-9a-fA-F]{32}", lambda h: self.opaque(h.group(0).encode()).decode(), value)
            if lname.startswith("x-amz-checksum-") and not self.echo_checksums:
                continue
            if lname.startswith("x-amz-server-side-encryption"):
                continue
            out.append((name, value))
        if kind in self.OBJECT_KINDS:
            out.append(("x-amz-server-side-encryption", "aws:kms"))
            out.append(("x-amz-server-side-encryption-aws-kms-key-id", "arn:aws:kms:us-east-1:123456789012:key/test"))
        if kind == "UploadPart" and self.echo_checksums:
            present = {k.lower() for k, _ in out}
            for name, value in request_headers.items():
                lname = name.lower()
                if lname.startswith("x-amz-checksum-") and lname != "x-amz-checksum-algorithm" and lname not in present:
                    out.append((lname, value))
        return out

    def response_body(self, kind: str, body: bytes) -> bytes:
        if kind not in ("ListParts", "CompleteMultipartUpload"):
            return body
        body = self._map_etags(body, self.opaque)
        if not self.echo_checksums:
            body = self._CHECKSUM_ELEMENT.sub(b"", body)
        return body


def _split_host(host: str) -> str:
    host = host.strip()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def classify(method: str, path: str, query: dict[str, str], host: str = "") -> str:
    """Map an S3 REST request onto an operation kind (path-style or virtual-host-style)."""
    method = method.upper()
    hostname = _split_host(host).lower()
    segments = path.split("?", 1)[0].lstrip("/")
    if hostname and not _is_ip(hostname) and hostname != "localhost" and "." in hostname:
        # virtual-hosted-style: bucket in the Host header, the whole path is the key
        has_bucket, has_key = True, bool(segments)
    else:
        bucket, _, key = segments.partition("/")
        has_bucket, has_key = bool(bucket), bool(key)
    if not has_bucket:
        return "Other"  # ListBuckets & co.
    if has_key:
        if method == "POST" and "uploads" in query:
            return "CreateMultipartUpload"
        if "uploadId" in query:
            if method == "PUT" and "partNumber" in query:
                return "UploadPart"
            return {
                "POST": "CompleteMultipartUpload",
                "DELETE": "AbortMultipartUpload",
                "GET": "ListParts",
            }.get(method, "Other")
        if _OBJECT_SUBRESOURCES.intersection(query):
            return "Other"
        return {
            "HEAD": "HeadObject",
            "GET": "GetObject",
            "PUT": "PutObject",
            "DELETE": "DeleteObject",
        }.get(method, "Other")
    # bucket-level request
    if method == "GET" and "uploads" in query:
        return "ListMultipartUploads"
    if method == "PUT" and not query:
        return "CreateBucket"
    return "Other"


def _error_xml(code: str, message: str, request_id: str, resource: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{_xml_escape(resource)}</Resource>"
        f"<RequestId>{request_id}</RequestId><HostId>s3-proxy-fault-injection</HostId></Error>"
    ).encode()


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _ClientGone(Exception):
    """The client connection broke while we were talking to it."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # don't join idle keep-alive handler threads on close
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, proxy: S3Proxy) -> None:
        self.proxy = proxy
        self.open_connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # Skip HTTPServer.server_bind: it does a reverse DNS lookup (getfqdn).
        TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def verify_request(self, request, client_address) -> bool:
        self.proxy._note_connection()
        if self.proxy.is_down:
            _rst_close(request)
            return False
        return True

    def handle_error(self, request, client_address) -> None:
        log.debug("s3 proxy: unhandled error for %s", client_address, exc_info=True)


def _rst_close(sock: socket.socket, rfile=None) -> None:
    """Abort a TCP connection with RST (SO_LINGER 0 then close)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if rfile is not None:
        with contextlib.suppress(OSError):
            rfile.close()  # drop the makefile() reference so close() really closes
    with contextlib.suppress(OSError):
        sock.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    _expect_pending = False

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.conn_lock:
            self.server.open_connections.add(self.connection)

    def finish(self) -> None:
        with self.server.conn_lock:
            self.server.open_connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def handle_expect_100(self) -> bool:
        # Defer "100 Continue" until we actually decide to read the body.
        self._expect_pending = True
        return True

    def send_continue_if_pending(self) -> None:
        if self._expect_pending:
            self._expect_pending = False
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def handle_one_request(self) -> None:
        self._expect_pending = False
        try:
            self.raw_requestline = self.rfile.readline(_MAX_LINE + 1)
        except OSError:
            self.close_connection = True
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        if len(self.raw_requestline) > _MAX_LINE:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if self.server.proxy.is_down:
            self.close_connection = True
            _rst_close(self.connection, self.rfile)
            return
        if not self.parse_request():
            return
        try:
            self.server.proxy._handle(self)
        except _ClientGone:
            self.close_connection = True

    def log_message(self, format: str, *args) -> None:
        log.debug("s3 proxy: " + format, *args)


class _BodyReader:
    """Reads the client's request body as raw pieces to relay; counts payload (de-chunked) bytes."""

    def __init__(self, rfile, content_length: int | None, chunked: bool) -> None:
        self.rfile = rfile
        self.remaining = content_length or 0
        self.chunked = chunked
        self.payload_bytes = 0
        self.done = not chunked and self.remaining == 0

    def _read(self, n: int) -> bytes:
        try:
            data = self.rfile.read(n)
        except OSError as exc:
            raise _ClientGone(str(exc)) from exc
        if len(data) != n:
            raise _ClientGone("client closed connection mid-body")
        return data

    def _readline(self) -> bytes:
        try:
            line = self.rfile.readline(_MAX_LINE + 1)
        except OSError as exc:
            raise _ClientGone(str(exc)) from exc
        if not line.endswith(b"\n"):
            raise _ClientGone("client closed connection mid-body (chunked)")
        return line

    def pieces(self, limit: int | None = None, chunk: int = _CHUNK) -> Iterator[bytes]:
        """Yield raw pieces (of at most ``chunk`` payload bytes) until the body ends (or ``limit``
        payload bytes have been read)."""
        if self.chunked:
            yield from self._chunked_pieces(limit, chunk)
            return
        while self.remaining > 0 and (limit is None or self.payload_bytes < limit):
            n = min(chunk, self.remaining)
            if limit is not None:
                n = min(n, max(1, limit - self.payload_bytes))
            data = self._read(n)
            self.remaining -= n
            self.payload_bytes += n
            yield data
        self.done = self.remaining == 0

    def _chunked_pieces(self, limit: int | None, chunk: int) -> Iterator[bytes]:
        while not self.done and (limit is None or self.payload_bytes < limit):
            line = self._readline()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise _ClientGone(f"bad chunk size line {line[:80]!r}") from exc
            if size == 0:
                trailer = [line]
                while True:
                    t = self._readline()
                    trailer.append(t)
                    if t in (b"\r\n", b"\n"):
                        break
                self.done = True
                yield b"".join(trailer)
                return
            yield line
            left = size
            while left > 0:
                n = min(chunk, left)
                data = self._read(n)
                left -= n
                self.payload_bytes += n
                yield data
            yield self._readline()  # CRLF after the chunk data

    def drain(self) -> None:
        for _ in self.pieces():
            pass


class S3Proxy:
    """Fault-injecting reverse proxy in front of a loopback S3 endpoint.

    ``count``/``requests`` see every request the proxy handled: forwarded ones *and*
    ones answered (or reset, status 0) by an injected fault; filter with ``status=`` or
    ``RequestRecord.injected``.  Connections/requests dropped by ``set_down(True)`` are
    not recorded (see ``refused_connections``).

    A request is recorded -- and ``on_request`` called, on the connection's thread --
    right before the first byte of its response (or the RST) goes to the client, so once
    a client call has returned, its request is already counted.  Should the client
    connection then break, the record's status is changed to 0 in place.  Exceptions
    raised by the hook are logged and kept in ``hook_errors``; they never reach the client.

    Faults are checked in the order they were added; the first matching active fault
    whose ``random() < probability`` draw succeeds fires (one draw per active matching
    fault, from a single ``random.Random(seed)``).  An ``error_200`` whose upstream
    answer was not 2xx is passed through untouched and does not use up ``times``.
    """

    def __init__(self, upstream: str, *, seed: int = 0, upstream_timeout: float = 120.0) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme != "http" or not parsed.hostname or not parsed.port:
            raise ValueError(f"upstream must look like http://127.0.0.1:PORT, got {upstream!r}")
        host = parsed.hostname
        if host == "localhost":
            host = "127.0.0.1"
        if not (_is_ip(host) and ipaddress.ip_address(host).is_loopback):
            raise ValueError(f"upstream must be on the loopback interface, got {upstream!r}")
        self.upstream = upstream
        self._up_host = host
        self._up_port = parsed.port
        self.upstream_timeout = upstream_timeout
        self.seed = seed
        self.url = ""
        self.on_request: Callable[[RequestRecord], None] | None = None
        #: When set, answers are rewritten to look like an SSE-KMS store (see KmsStore).
        self.kms: KmsStore | None = None
        #: Any other store stand-in with KmsStore's interface (``request_body``, ``real_etag_header``,
        #: ``response_headers``, ``response_body``), and optionally ``refuse(kind, body)``, which returns
        #: (status, code, message) to answer a request with an error instead of forwarding it (see
        #: tests/support/store_standins.py). Used when ``kms`` is not set.
        self.store: object | None = None
        self.hook_errors: list[BaseException] = []
        self.accepted_connections = 0
        self.refused_connections = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._faults: list[_ArmedFault] = []
        self._in_flight: dict[str, int] = {}
        self._in_flight_changed = threading.Condition(self._lock)
        self._down = False
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> S3Proxy:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(self)
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"s3-proxy-{port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with server.conn_lock:
            conns = list(server.open_connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> S3Proxy:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- inspection --------------------------------------------------------------------
    def count(self, kind: str, *, status: int | None = None) -> int:
        if kind not in KINDS:
            raise ValueError(f"unknown request kind {kind!r}; expected one of {KINDS}")
        with self._lock:
            return sum(1 for r in self._records if r.kind == kind and (status is None or r.status == status))

    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def in_flight(self, kind: str) -> int:
        """Requests of ``kind`` whose head arrived and whose handling has not ended yet."""
        with self._lock:
            return self._in_flight.get(kind, 0)

    def wait_in_flight(self, kind: str, at_least: int, timeout: float) -> bool:
        """Block until ``at_least`` requests of ``kind`` are in flight at once; False on timeout."""
        with self._in_flight_changed:
            return self._in_flight_changed.wait_for(lambda: self._in_flight.get(kind, 0) >= at_least, timeout)

    def _count_in_flight(self, kind: str, change: int) -> None:
        with self._in_flight_changed:
            self._in_flight[kind] = self._in_flight.get(kind, 0) + change
            self._in_flight_changed.notify_all()

    def reset_counts(self) -> None:
        with self._lock:
            self._records.clear()

    # -- fault control -----------------------------------------------------------------
    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(_ArmedFault(fault))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def fail_nth(self, kind: str, number: int, *, status: int = 500) -> None:
        """Answer the ``number``-th request of ``kind`` from now on with ``status`` (the connection
        "breaks" there); the ones before and after it go through. Decided as each request arrives, so
        no request can slip past while an earlier one is still being recorded."""
        self.add_fault(Fault(kind=kind, action="error", status=status, times=1, skip=number - 1))

    def injections(self, fault: Fault) -> int:
        """How many times ``fault`` (the very object passed to add_fault) has fired."""
        with self._lock:
            return sum(armed.applied for armed in self._faults if armed.fault is fault)

    def set_down(self, down: bool) -> None:
        with self._lock:
            self._down = bool(down)

    @property
    def is_down(self) -> bool:
        with self._lock:
            return self._down

    def _note_connection(self) -> None:
        with self._lock:
            if self._down:
                self.refused_connections += 1
            else:
                self.accepted_connections += 1

    def _pick_fault(self, kind: str) -> _ArmedFault | None:
        with self._lock:
            for armed in self._faults:
                fault = armed.fault
                if fault.kind != kind or (fault.times is not None and armed.applied >= fault.times):
                    continue
                if fault.above_in_flight is not None and self._in_flight.get(kind, 0) + 1 <= fault.above_in_flight:
                    continue
                if armed.skipped < fault.skip:
                    armed.skipped += 1
                    continue
                if self._rng.random() < fault.probability:
                    armed.applied += 1
                    return armed
        return None

    def _unpick(self, armed: _ArmedFault) -> None:
        with self._lock:
            armed.applied -= 1

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self._records.append(rec)
        hook = self.on_request
        if hook is not None:
            try:
                hook(rec)
            except BaseException as exc:  # a test hook must never kill the proxy thread
                log.exception("s3 proxy: on_request hook failed")
                self.hook_errors.append(exc)

    # -- request handling --------------------------------------------------------------
    def _handle(self, h: _Handler) -> None:
        method = h.command
        path, _, raw_query = h.path.partition("?")
        query = dict(urllib.parse.parse_qsl(raw_query, keep_blank_values=True))
        headers = h.headers
        kind = classify(method, path, query, headers.get("Host", ""))
        try:
            part_number = int(query["partNumber"]) if "partNumber" in query else None
        except ValueError:
            part_number = None
        chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        try:
            content_length = None if chunked else int(headers.get("Content-Length") or 0)
        except ValueError:
            h.close_connection = True
            h.send_error(400, "bad Content-Length")
            return
        rec = RequestRecord(
            kind=kind,
            method=method,
            path=path,
            query=query,
            part_number=part_number,
            upload_id=query.get("uploadId"),
            status=0,
            body_bytes=0,
            injected=None,
            expect_continue=h._expect_pending,
            chunked=chunked,
            headers=dict(headers.items()),
        )
        ex = _Exchange(self, h, _BodyReader(h.rfile, content_length, chunked), rec)
        armed = self._pick_fault(kind)
        fault = armed.fault if armed else None
        self._count_in_flight(kind, +1)
        try:
            if fault is None:
                self._forward(ex)
            elif fault.action == "error":
                rec.injected = "error"
                self._respond_error(ex, fault)
            elif fault.action == "reset":
                rec.injected = "reset"
                ex.send_continue_if_pending()
                for _ in ex.body.pieces(limit=fault.after_bytes):
                    pass
                ex.commit(0)  # recorded before the RST so the client can't observe it first
                h.close_connection = True
                _rst_close(h.connection, h.rfile)
            elif fault.action == "delay":
                rec.injected = "delay"
                self._stopping.wait(fault.delay)
                self._forward(ex)
            elif fault.action == "throttle":
                rec.injected = "throttle"
                self._forward(ex, rate=fault.rate)
            else:  # error_200; if upstream fails by itself nothing is replaced and the budget is kept
                ex.release_fault = lambda: self._unpick(armed)
                self._forward(ex, error_200=fault)
        except _ClientGone:
            h.close_connection = True
            rec.status = 0
            ex.commit(0)
        finally:
            self._count_in_flight(kind, -1)

    def _respond_error(self, ex: _Exchange, fault: Fault, message: str | None = None) -> None:
        h = ex.h
        if h._expect_pending:
            # Final response instead of "100 Continue": the client won't send the body,
            # so the connection can't be reused.
            h._expect_pending = False
            h.close_connection = True
        else:
            ex.body.drain()
        request_id = uuid.uuid4().hex[:16].upper()
        message = message or fault.message or _ERROR_MESSAGES.get(fault.code, f"Injected {fault.code} by S3Proxy")
        payload = _error_xml(fault.code, _xml_escape(message), request_id, ex.rec.path)
        out = [
            ("Content-Type", "application/xml"),
            ("x-amz-request-id", request_id),
            ("Content-Length", str(len(payload))),
        ]
        ex.write_head(fault.status, http.client.responses.get(fault.status, "Error"), out)
        if h.command != "HEAD":
            ex.write(payload)

    def _upstream_failed(self, ex: _Exchange, exc: BaseException) -> None:
        h = ex.h
        ex.release()
        log.warning("s3 proxy: upstream %s failed for %s %s: %s", self.upstream, h.command, h.path, exc)
        h._expect_pending = False
        h.close_connection = True
        request_id = uuid.uuid4().hex[:16].upper()
        payload = _error_xml("BadGateway", f"S3Proxy could not reach upstream: {exc}", request_id, ex.rec.path)
        ex.write_head(502, "Bad Gateway", [("Content-Type", "application/xml"), ("Content-Length", str(len(payload)))])
        if h.command != "HEAD":
            ex.write(payload)

    def _forward(self, ex: _Exchange, error_200: Fault | None = None, rate: int | None = None) -> bool:
        """Forward the request upstream and relay the answer. Returns True if error_200 was applied.

        With ``rate`` the body is read from the client at that many bytes per second."""
        h = ex.h
        conn = http.client.HTTPConnection(self._up_host, self._up_port, timeout=self.upstream_timeout)
        kms = self.kms if self.kms is not None else self.store
        rewritten: bytes | None = None
        if kms is not None and ex.rec.kind == "CompleteMultipartUpload" and not ex.body.chunked:
            ex.send_continue_if_pending()
            rewritten = kms.request_body(ex.rec.kind, b"".join(ex.body.pieces()))
            refusal = getattr(kms, "refuse", lambda kind, body: None)(ex.rec.kind, rewritten)
            if refusal is not None:
                status, code, message = refusal
                ex.rec.injected = "error"
                self._respond_error(ex, Fault(kind=ex.rec.kind, action="error", status=status, code=code), message)
                return False
        try:
            try:
                conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
                connection_tokens = {
                    t.strip().lower() for v in h.headers.get_all("Connection", []) for t in v.split(",")
                }
                for name, value in h.headers.items():
                    lname = name.lower()
                    if lname in _HOP_BY_HOP or lname in connection_tokens:
                        continue
                    if rewritten is not None and lname == "content-length":
                        value = str(len(rewritten))
                    if kms is not None and lname == "if-match":  # the store's own (opaque) ETag, as S3 takes it
                        value = kms.real_etag_header(value)
                    conn.putheader(name, value)
                conn.putheader("Connection", "close")
                conn.endheaders()
            except (OSError, http.client.HTTPException) as exc:
                self._upstream_failed(ex, exc)
                return False
            # Upstream is reachable and has our headers: now let the client send its body.
            ex.send_continue_if_pending()
            try:
                if rewritten is not None:
                    conn.send(rewritten)
                else:
                    for piece in ex.body.pieces() if rate is None else self._throttled(ex.body, rate):
                        conn.send(piece)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                self._upstream_failed(ex, exc)
                return False
            return self._relay_response(ex, resp, error_200)
        finally:
            conn.close()

    def _throttled(self, body: _BodyReader, rate: int) -> Iterator[bytes]:
        """The body's pieces, read no faster than ``rate`` bytes/s (ends early if the proxy stops)."""
        started = time.monotonic()
        for piece in body.pieces(chunk=max(1, min(_CHUNK, rate // 20))):
            yield piece
            ahead = started + body.payload_bytes / rate - time.monotonic()
            if ahead > 0 and self._stopping.wait(ahead):
                raise _ClientGone("proxy stopping")

    def _relay_response(self, ex: _Exchange, resp: http.client.HTTPResponse, error_200: Fault | None) -> bool:
        h = ex.h
        status, reason = resp.status, resp.reason
        headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _RESPONSE_DROP]
        no_body = h.command == "HEAD" or status in (204, 304) or 100 <= status < 200
        kms = self.kms if self.kms is not None else self.store
        try:
            if kms is not None and 200 <= status < 300 and error_200 is None:
                kind = ex.rec.kind
                headers = kms.response_headers(kind, headers, ex.rec.headers)
                if not no_body and kind in ("ListParts", "CompleteMultipartUpload"):
                    data = kms.response_body(kind, resp.read())
                    headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
                    ex.write_head(status, reason, [*headers, ("Content-Length", str(len(data)))])
                    ex.write(data)
                    return False
            if error_200 is not None:
                data = b"" if no_body else resp.read()
                if 200 <= status < 300:
                    request_id = uuid.uuid4().hex[:16].upper()
                    code = error_200.code
                    payload = _error_xml(code, _ERROR_MESSAGES.get(code, f"Injected {code}"), request_id, ex.rec.path)
                    out = [
                        ("Content-Type", "application/xml"),
                        ("x-amz-request-id", request_id),
                        ("Content-Length", str(len(payload))),
                    ]
                    ex.rec.injected = "error_200"
                    ex.write_head(200, "OK", out)
                    ex.write(payload)
                    return True
                ex.release()
                if not no_body:
                    headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
                    headers.append(("Content-Length", str(len(data))))
                ex.write_head(status, reason, headers)
                ex.write(data)
                return False

            if no_body:
                ex.write_head(status, reason, headers)
            elif resp.length is not None:  # Content-Length framed: stream as is
                ex.write_head(status, reason, headers)
                while data := resp.read(_CHUNK):
                    ex.write(data)
            elif h.request_version == "HTTP/1.1":  # upstream chunked or close-delimited -> re-chunk
                ex.write_head(status, reason, [*headers, ("Transfer-Encoding", "chunked")])
                while data := resp.read1(_CHUNK):
                    ex.write(b"%x\r\n%s\r\n" % (len(data), data))
                ex.write(b"0\r\n\r\n")
            else:
                h.close_connection = True
                ex.write_head(status, reason, headers)
                while data := resp.read(_CHUNK):
                    ex.write(data)
        except (OSError, http.client.HTTPException) as exc:
            # upstream broke mid-response: the client can only learn that from a broken connection
            log.warning("s3 proxy: upstream broke mid-response for %s %s: %s", h.command, h.path, exc)
            ex.release()
            h.close_connection = True
            _rst_close(h.connection, h.rfile)
            raise _ClientGone(str(exc)) from exc
        return False


class _Exchange:
    """One request/response on a client connection.

    The request is recorded (and ``on_request`` called) right before the first byte of
    the response goes out (or before the RST), so by the time a client call returns its
    request is already visible in ``count()``/``requests()``.  If the client connection
    then breaks, the record's ``status`` is changed to 0 in place.
    """

    def __init__(self, proxy: S3Proxy, h: _Handler, body: _BodyReader, rec: RequestRecord) -> None:
        self.proxy, self.h, self.body, self.rec = proxy, h, body, rec
        self.committed = False
        self.release_fault: Callable[[], None] | None = None

    def release(self) -> None:
        """Give back an error_200 injection that could not be applied (before anything is recorded)."""
        release, self.release_fault = self.release_fault, None
        if release is not None:
            release()

    def commit(self, status: int) -> None:
        self.rec.status = status
        self.rec.body_bytes = self.body.payload_bytes
        if not self.committed:
            self.committed = True
            self.proxy._record(self.rec)

    def send_continue_if_pending(self) -> None:
        try:
            self.h.send_continue_if_pending()
        except OSError as exc:
            raise _ClientGone(str(exc)) from exc

    def write(self, data: bytes) -> None:
        try:
            self.h.wfile.write(data)
        except OSError as exc:
            raise _ClientGone(str(exc)) from exc

    def write_head(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        self.commit(status)
        if self.h.close_connection:
            headers = [*headers, ("Connection", "close")]
        lines = [f"HTTP/1.1 {status} {reason}\r\n"]
        lines.extend(f"{k}: {v}\r\n" for k, v in headers)
        lines.append("\r\n")
        self.write("".join(lines).encode("latin-1"))


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Small polling helper for tests: True once ``predicate()`` holds, False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
