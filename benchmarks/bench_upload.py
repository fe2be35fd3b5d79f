#!/usr/bin/env python
"""Benchmark the multipart upload engine against boto3's upload_file and a sequential loop.

Run by hand, never in CI (see benchmarks/README.md):

    python benchmarks/bench_upload.py --size 1GiB --rounds 3

By default a moto S3 server is started on 127.0.0.1 in its own process (so its CPU is not counted
as client CPU); ``--endpoint`` points at an existing store instead. Every upload runs in a fresh
worker process (this script with the hidden ``--worker`` option), contenders alternating
A B C D A B C D ..., and each worker reports wall time and CPU of the upload alone and its peak RSS.

``--part-size`` and ``--concurrency`` take comma-separated lists; every combination becomes its own
row, e.g. ``--contenders engine --part-size 8MiB,16MiB,32MiB,64MiB --concurrency 4,8,16``.

``--max-bandwidth 32MiB`` caps the engine (``UploadOptions.max_bandwidth``) and s3transfer's contenders
(``TransferConfig.max_bandwidth``) at that many bytes per second, and reports each one's measured rate
against the cap, e.g. ``--size 256MiB --contenders engine,boto3-default --max-bandwidth 32MiB``.

``--max-bandwidth-timetable "0:8MiB,6:32MiB,12:off"`` gives the engine a bandwidth timetable instead: seconds
from the upload's start -> cap (``off``: none), translated at the start into wall-clock ``"HH:MM:SS"`` keys
(UTC) of ``UploadOptions.max_bandwidth``. A byte-counting TCP relay between the worker and the store records
the bytes on the wire over time, and the report gives each period's rate / its cap, leaving out
``--timetable-settle`` seconds (default 1) after the start and each switch and before the next switch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

CONTENDERS = ("engine", "boto3-default", "crt", "boto3-tuned", "sequential", "engine-baseline")
#: Contenders that take --part-size / --concurrency (the others ignore one or both).
USES_PART_SIZE = {"engine", "crt", "boto3-tuned", "sequential", "engine-baseline"}
USES_CONCURRENCY = {"engine", "boto3-tuned", "engine-baseline"}
#: The engine, with this checkout's controller or with --baseline-rev's (before/after in one run).
ENGINES = {"engine", "engine-baseline"}

_UNITS = {
    "": 1,
    "b": 1,
    "k": KiB,
    "kb": 1000,
    "kib": KiB,
    "m": MiB,
    "mb": 1000**2,
    "mib": MiB,
    "g": GiB,
    "gb": 1000**3,
    "gib": GiB,
    "t": 1024 * GiB,
    "tb": 1000**4,
    "tib": 1024 * GiB,
}


def parse_size(text: str) -> int:
    """'1GiB' -> 1073741824; binary suffixes (KiB/MiB/GiB, or K/M/G), decimal ones (KB/MB/GB), or bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 256MiB, 1GiB, 8GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_timetable(text: str) -> list[tuple[int, int | None]]:
    """'0:8MiB,6:32MiB,12:off' -> [(0, 8 MiB), (6, 32 MiB), (12, None)]: whole seconds from the upload's start
    to a cap in bytes per second (``off``: uncapped), starting at 0, increasing."""
    periods: list[tuple[int, int | None]] = []
    for item in text.split(","):
        offset, sep, rate = item.strip().partition(":")
        if not sep or not offset.strip().isdigit():
            raise argparse.ArgumentTypeError(f"not SECONDS:RATE: {item!r} (e.g. '0:8MiB,6:32MiB,12:off')")
        cap = None if rate.strip().lower() == "off" else parse_size(rate)
        if cap == 0:
            raise argparse.ArgumentTypeError(f"a cap of 0 in {item!r}: write 'off' for no cap")
        periods.append((int(offset), cap))
    offsets = [o for o, _ in periods]
    if offsets[0] != 0 or offsets != sorted(set(offsets)) or offsets[-1] >= 86400:
        raise argparse.ArgumentTypeError(f"offsets must start at 0 and increase (below a day): {text!r}")
    return periods


def format_size(n: int) -> str:
    if n == 0:
        return "auto"
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"


#: ``auto`` in --part-size / --concurrency: the engine's automatic choice (part size by plan_parts,
#: adaptive parallelism), stored as 0.
AUTO = 0


def size_list(text: str) -> list[int]:
    return [AUTO if t.strip() == "auto" else parse_size(t) for t in text.split(",") if t.strip()]


def int_list(text: str) -> list[int]:
    return [AUTO if t.strip() == "auto" else int(t) for t in text.split(",") if t.strip()]


def _auto_part_size(args: argparse.Namespace) -> int:
    """``--part-size`` for contenders that need a number: with ``auto``, what plan_parts picks for the file."""
    if args.part_size_value:
        return args.part_size_value
    _checkout_on_path()
    from airflow_mpu_provider.multipart.parts.plan import plan_parts

    return plan_parts(os.path.getsize(args.file)).part_size


# -- the worker: one upload in a fresh process ------------------------------------------------


def make_client(args: argparse.Namespace, concurrency: int, *, default_config: bool = False) -> Any:
    """A client configured as the operator configures it (or boto3's defaults for boto3-default).

    Path-style addressing is added for every contender: endpoints on an IP address need it.
    """
    import boto3
    from botocore.config import Config

    s3: dict[str, Any] = {"addressing_style": "path"}
    if args.payload_signing == "off":
        s3["payload_signing_enabled"] = False  # experiment: UNSIGNED-PAYLOAD even over plain HTTP
    if default_config:
        config = Config(s3=s3)
    else:
        config = Config(
            max_pool_connections=(concurrency or 64) + 4,  # auto: the engine's max_concurrency
            retries={"mode": "standard", "max_attempts": 10},
            s3=s3,
        )
    if args.https and not args.verify_tls:
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    return boto3.client("s3", endpoint_url=args.endpoint, config=config, verify=args.verify_tls if args.https else None)


def _engine_upload(client: Any, args: argparse.Namespace, key: str) -> dict[str, Any]:
    from airflow_mpu_provider.multipart.file_engine import FileUploadEngine
    from airflow_mpu_provider.multipart.options import UploadOptions
    from airflow_mpu_provider.multipart.parts.plan import plan_parts
    from airflow_mpu_provider.multipart.sources.file import FileSource

    if args.no_checksum_echo:  # a store without checksum support: the engine's parts lose the algorithm name
        _checkout_on_path()
        from tests.support.local_airflow import store_echoes_no_checksums

        store_echoes_no_checksums(client)
    chosen: dict[str, Any] = {"concurrency": args.concurrency_value or None, "max_bandwidth": args.max_bandwidth}
    extra: dict[str, Any] = {}
    if args.max_bandwidth_timetable:
        # Whole seconds: the timetable's keys are "HH:MM:SS" (UTC, as the engine reads a dict), so the periods
        # are measured from this second, not from the exact start.
        from datetime import UTC, datetime

        base = int(time.time())
        chosen["max_bandwidth"] = {
            datetime.fromtimestamp(base + offset, UTC).strftime("%H:%M:%S"): cap
            for offset, cap in args.max_bandwidth_timetable
        }
        extra = {"timetable_base": base, "timetable": chosen["max_bandwidth"]}
    if args.checksum_algorithm != "default":
        chosen["checksum_algorithm"] = args.checksum_algorithm
    if args.checksum_type != "default":
        chosen["checksum_type"] = args.checksum_type
    options = UploadOptions(**chosen)
    with FileSource(args.file) as src:
        plan = plan_parts(src.size, args.part_size_value or None)
        engine = FileUploadEngine(client, bucket=args.bucket, key=key, source=src, plan=plan, options=options)
        result = engine.run()
    return {
        "parts": result.parts,
        "part_size": result.part_size,
        "workers": result.concurrency_settled,
        "etag": result.etag,
        "checksum": result.checksum,
        "ended_at": time.time(),
        **extra,
    }


def _boto3_upload(client: Any, args: argparse.Namespace, key: str, tuned: bool) -> dict[str, Any]:
    from boto3.s3.transfer import TransferConfig

    if tuned:
        config = TransferConfig(
            multipart_threshold=8 * MiB,
            multipart_chunksize=_auto_part_size(args),
            max_concurrency=args.concurrency_value or 8,
            max_bandwidth=args.max_bandwidth,
        )
    else:
        config = TransferConfig(max_bandwidth=args.max_bandwidth)
    client.upload_file(args.file, args.bucket, key, Config=config)
    return {"part_size": config.multipart_chunksize, "workers": config.max_concurrency}


def _crt_upload(args: argparse.Namespace, key: str) -> dict[str, Any]:
    """s3transfer's CRTTransferManager over awscrt: what boto3 uses when ``preferred_transfer_client="crt"``.

    boto3 cannot point its CRT path at a custom endpoint, so the manager is built as s3transfer builds
    it, with the endpoint, path-style addressing and static credentials: awscrt's S3 client sends the
    requests botocore's serializer describes. CRT picks its own concurrency (from a throughput target).
    """
    import botocore.session
    from awscrt.auth import AwsCredentialsProvider
    from botocore.config import Config
    from s3transfer.crt import BotocoreCRTRequestSerializer, CRTTransferManager, create_s3_crt_client

    session = botocore.session.get_session()
    credentials = session.get_credentials().get_frozen_credentials()
    region = session.get_config_variable("region") or "us-east-1"
    https = args.endpoint.startswith("https")
    crt_client = create_s3_crt_client(
        region,
        crt_credentials_provider=AwsCredentialsProvider.new_static(
            credentials.access_key, credentials.secret_key, credentials.token
        ),
        part_size=_auto_part_size(args),
        use_ssl=https,
        verify=(args.verify_tls if https else None),
    )
    serializer = BotocoreCRTRequestSerializer(
        session,
        client_kwargs={
            "region_name": region,
            "endpoint_url": args.endpoint,
            "config": Config(s3={"addressing_style": "path"}),
        },
    )
    with CRTTransferManager(crt_client, serializer) as manager:
        manager.upload(args.file, args.bucket, key).result()
    return {"part_size": _auto_part_size(args), "workers": "crt"}


def _sequential_upload(client: Any, args: argparse.Namespace, key: str) -> dict[str, Any]:
    """The simplest correct multipart upload: one part read and sent at a time, botocore's defaults."""
    part_size = _auto_part_size(args)
    upload_id = client.create_multipart_upload(Bucket=args.bucket, Key=key)["UploadId"]
    parts = []
    try:
        with open(args.file, "rb") as f:
            number = 1
            while True:
                data = f.read(part_size)
                if not data and number > 1:
                    break
                response = client.upload_part(
                    Bucket=args.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
                )
                parts.append({"PartNumber": number, "ETag": response["ETag"]})
                number += 1
                if len(data) < part_size:
                    break
        client.complete_multipart_upload(
            Bucket=args.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        client.abort_multipart_upload(Bucket=args.bucket, Key=key, UploadId=upload_id)
        raise
    return {"parts": len(parts), "part_size": part_size, "workers": 1}


class PartTimer:
    """When the parts were on the wire: the first UploadPart sent to the last one answered, and their bytes
    (every attempt: a retry's bytes use the link too). The rate a bandwidth cap governs, without the
    Create/Complete the store spends its own time on (moto needs seconds to assemble 256 MiB on a busy
    machine). Registered only with --max-bandwidth, so that it costs the other measurements nothing.
    """

    def __init__(self, client: Any) -> None:
        self.first_sent: float | None = None
        self.last_answered: float | None = None
        self.bytes = 0
        client.meta.events.register("before-send.s3.UploadPart", self._sent)
        client.meta.events.register("after-call.s3.UploadPart", self._answered)

    def _sent(self, request: Any = None, **_: Any) -> None:
        if self.first_sent is None:
            self.first_sent = time.perf_counter()
        # aws-chunked bodies (s3transfer's trailing checksums over HTTPS) say their size in a header of their own.
        size = request.headers.get("X-Amz-Decoded-Content-Length") or request.headers.get("Content-Length") or 0
        self.bytes += int(size)  # += under the GIL: these are rare

    def _answered(self, **_: Any) -> None:
        self.last_answered = time.perf_counter()

    def record(self) -> dict[str, Any]:
        if self.first_sent is None or self.last_answered is None:
            return {}
        seconds = self.last_answered - self.first_sent
        return {
            "parts_seconds": round(seconds, 4),
            "parts_bytes": self.bytes,
            "parts_mib_s": round(self.bytes / MiB / seconds, 2),
        }


class ThreadProfiler:
    """cProfile for every thread (3.11 has no setprofile_all_threads): a profiler per thread, merged.

    The timer is the thread's CPU clock by default, so the numbers say where client CPU goes rather
    than where threads wait.
    """

    def __init__(self, cpu: bool) -> None:
        self.timer = time.thread_time if cpu else time.perf_counter
        self.profilers: list[Any] = []

    def _start_in_thread(self, *_: Any) -> None:
        import cProfile

        profiler = cProfile.Profile(self.timer)
        self.profilers.append(profiler)
        profiler.enable()  # replaces this hook for the rest of the thread

    def __enter__(self) -> ThreadProfiler:
        import threading

        threading.setprofile(self._start_in_thread)
        self._start_in_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        import threading

        self.profilers[0].disable()
        threading.setprofile(None)  # type: ignore[arg-type]

    def report(self, top: int) -> str:
        import io
        import pstats

        out = io.StringIO()
        stats = pstats.Stats(self.profilers[0], stream=out)
        for profiler in self.profilers[1:]:
            stats.add(profiler)
        clock = "thread CPU time" if self.timer is time.thread_time else "wall time"
        out.write(f"== cProfile ({clock}, {len(self.profilers)} threads merged), top {top} by cumulative ==\n")
        stats.sort_stats("cumulative").print_stats(top)
        out.write(f"== top {top} by own time (tottime) ==\n")
        stats.sort_stats("tottime").print_stats(top)
        return out.getvalue()


def _trace_controller(args: argparse.Namespace) -> dict[str, list] | None:
    """Record what the adaptive controller saw and did: every part's latency with the limit at its end, and
    every change of the limit (seconds from the controller's start). ``engine-baseline`` also swaps in the
    controller class of ``--controller-file`` (``--baseline-rev``'s parallelism.py). Works with any version
    of the class that has ``sent``/``part_done``/``throttled`` and ``limit``."""
    _checkout_on_path()
    import importlib.util
    import inspect

    from airflow_mpu_provider.multipart import adaptive_parts

    base = adaptive_parts.AdaptiveParallelism
    if args.controller_file:
        spec = importlib.util.spec_from_file_location("baseline_parallelism", args.controller_file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        base = module.AdaptiveParallelism
    trace: dict[str, list] = {"limits": [], "parts": [], "throttles": []}
    takes_more = 2 if "token" in inspect.signature(base.part_done).parameters else 0

    class Traced(base):  # type: ignore[misc,valid-type]
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self._t0 = time.monotonic()
            trace["limits"].append([0.0, self.limit, "start"])

        def _now(self) -> float:
            return round(time.monotonic() - self._t0, 2)

        def _note(self) -> None:
            if trace["limits"][-1][1] != self.limit:
                trace["limits"].append([self._now(), self.limit, getattr(self, "reason", "")])

        def sent(self, total_bytes: int) -> int:
            out = super().sent(total_bytes)
            self._note()
            return out

        def part_done(self, seconds: float, *more: Any) -> None:
            super().part_done(seconds, *more[:takes_more])  # the baseline takes seconds only
            trace["parts"].append([self._now(), round(seconds, 2), self.limit])
            self._note()

        def throttled(self, in_flight: int | None = None) -> int:
            out = super().throttled(in_flight)
            trace["throttles"].append([self._now(), in_flight, self.limit])
            self._note()
            return out

        def begin_at(self, limit: int, reason: str) -> int:
            out = super().begin_at(limit, reason) if hasattr(base, "begin_at") else self.limit  # older: starts at 8
            self._note()
            return out

    if not hasattr(base, "reason"):  # the baseline predates what the log line and the summary name
        Traced.reason = "baseline controller"
        Traced.part_started = lambda self: 0
        Traced.path = lambda self: " -> ".join(str(limit) for _, limit, *_ in trace["limits"])
    adaptive_parts.AdaptiveParallelism = Traced
    return trace


def trace_report(record: dict[str, Any]) -> str:
    """One run's controller trace: the limit over time, and part latencies (median, count) by limit."""
    trace = record.get("trace") or {}
    limits = " ".join(f"{t:.0f}s:{n}" for t, n, *_ in trace.get("limits", []))
    by_limit: dict[int, list[float]] = {}
    for _, seconds, limit in trace.get("parts", []):
        by_limit.setdefault(limit, []).append(seconds)
    latencies = ", ".join(f"{n}: {statistics.median(v):.1f}s x{len(v)}" for n, v in sorted(by_limit.items()))
    throttles = len(trace.get("throttles", []))
    reasons = "".join(f"\n      {t:.1f}s -> {n}: {why}" for t, n, why in trace.get("limits", [])[1:] if why)
    parts = trace.get("parts", [])
    span = f"parts answered {parts[0][0]:.1f}-{parts[-1][0]:.1f} s after the start; " if parts else ""
    return (
        f"    {span}limit {limits}; part latency by limit at its end {latencies}"
        + (f"; throttled {throttles}x" if throttles else "")
        + reasons
    )


def run_worker(args: argparse.Namespace) -> int:
    import resource

    name = args.worker
    key = f"bench/{name}/{uuid.uuid4().hex}"
    client = make_client(args, args.concurrency_value, default_config=name == "boto3-default")
    size = os.path.getsize(args.file)
    uploads = {
        "engine": lambda: _engine_upload(client, args, key),
        "engine-baseline": lambda: _engine_upload(client, args, key),
        "boto3-default": lambda: _boto3_upload(client, args, key, tuned=False),
        "boto3-tuned": lambda: _boto3_upload(client, args, key, tuned=True),
        "crt": lambda: _crt_upload(args, key),
        "sequential": lambda: _sequential_upload(client, args, key),
    }
    upload = uploads[name]
    trace = _trace_controller(args) if name in ENGINES else None
    timer = PartTimer(client) if args.max_bandwidth and name != "crt" else None
    import cProfile  # noqa: F401  (imported before measuring, like everything else)

    rss_before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    profiler = ThreadProfiler(cpu=args.profile_timer == "cpu") if args.profile else None
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if profiler is not None:
        with profiler:
            details = upload()
    else:
        details = upload()
    seconds = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    head = client.head_object(Bucket=args.bucket, Key=key)
    if head["ContentLength"] != size:
        raise SystemExit(f"{name}: object has {head['ContentLength']} bytes, file has {size}")
    client.delete_object(Bucket=args.bucket, Key=key)
    user = ru1.ru_utime - ru0.ru_utime
    system = ru1.ru_stime - ru0.ru_stime
    record = {
        "contender": name,
        "size": size,
        "seconds": round(seconds, 4),
        "mib_s": round(size / MiB / seconds, 2),
        "cpu_user": round(user, 3),
        "cpu_sys": round(system, 3),
        "cpu_s": round(user + system, 3),
        "cpu_s_per_gib": round((user + system) / (size / GiB), 3),
        "peak_rss_mb": round(ru1.ru_maxrss / 1024, 1),
        "rss_before_upload_mb": round(rss_before_mb, 1),
        "minor_faults": ru1.ru_minflt - ru0.ru_minflt,  # fresh pages touched: part buffers being (re)allocated
        "vol_ctx_switches": ru1.ru_nvcsw - ru0.ru_nvcsw,
        "invol_ctx_switches": ru1.ru_nivcsw - ru0.ru_nivcsw,
        "profiled": bool(args.profile),
        **(timer.record() if timer is not None else {}),
        **details,
    }
    if trace is not None:
        record["trace"] = trace

    if profiler is not None:
        print(profiler.report(args.profile_top), file=sys.stderr)
    print(json.dumps(record), flush=True)
    return 0


# -- the local S3 server ----------------------------------------------------------------------


def run_server(args: argparse.Namespace) -> int:
    """Serve moto on 127.0.0.1 (port chosen by the OS), print 'PORT n', run until stdin closes."""
    if args.https:
        import threading

        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        server = make_server(
            "127.0.0.1",
            0,
            DomainDispatcherApplication(create_backend_app),
            threaded=True,
            request_handler=MotoRequestHandler,
            ssl_context="adhoc",
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
    else:
        from moto.server import ThreadedMotoServer

        moto_server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto_server.start()
        port = moto_server.get_host_and_port()[1]
    print(f"PORT {port}", flush=True)
    sys.stdin.read()  # the parent closes our stdin when it is done
    return 0


class LocalServer:
    def __init__(self, https: bool, log_path: Path) -> None:
        self.https = https
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.endpoint = ""

    def __enter__(self) -> LocalServer:
        cmd = [sys.executable, os.path.abspath(__file__), "--serve"] + (["--https"] if self.https else [])
        self._log = open(self.log_path, "w")  # closed in __exit__
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, env=child_env()
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.__exit__()
            raise SystemExit(f"moto server did not start; see {self.log_path}")
        scheme = "https" if self.https else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{int(line.split()[1])}"
        return self

    def cpu_seconds(self) -> float | None:
        """User+system CPU of the server process so far (Linux /proc), to show how busy moto is."""
        assert self.proc is not None
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class WireCounter:
    """A TCP relay on 127.0.0.1 in front of the store that records, for ``--max-bandwidth-timetable``, when
    each piece of the client's bytes went to the store (``time.time()``, the clock the worker's timetable uses).
    It only copies bytes, so it sees HTTP and HTTPS alike (TLS records: the bodies plus a few percent of
    framing and the requests' headers). It runs in the parent, which is idle during a run.
    """

    def __init__(self, endpoint: str) -> None:
        scheme, _, rest = endpoint.partition("://")
        host, _, port = rest.rstrip("/").rpartition(":")
        self.upstream = (host, int(port))
        self.sent: list[tuple[float, int]] = []  # (time, bytes) client -> store; list.append is atomic
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"{scheme}://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                store = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, store, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(store, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(256 * KiB):
                dst.sendall(data)
                if count:
                    self.sent.append((time.time(), len(data)))
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def bytes_between(self, start: float, end: float) -> int:
        return sum(n for t, n in list(self.sent) if start <= t < end)

    def close(self) -> None:
        self.listener.close()


def timetable_periods(
    record: dict[str, Any], periods: list[tuple[int, int | None]], wire: WireCounter, settle: float
) -> list[dict[str, Any]]:
    """Bytes on the wire and rate for each period of one run, ``settle`` seconds left out after the start and
    each switch, and before the next switch (the last period ends with the upload's last byte on the wire; an
    uncapped last period starts at its switch)."""
    base = record["timetable_base"]
    # The last period ends with the upload's last byte on the wire (Complete's request is a few hundred bytes).
    end = max((t for t, _ in list(wire.sent) if base <= t < record["ended_at"]), default=record["ended_at"])
    out = []
    for i, (offset, cap) in enumerate(periods):
        # After the start (Create, the first parts) and after each switch; an uncapped last period (nothing to
        # compare with) from its switch on: its few remaining parts often go in less than the margin.
        start = base + offset + (0 if cap is None and i + 1 == len(periods) else settle)
        stop = min(base + periods[i + 1][0] - settle, end) if i + 1 < len(periods) else end
        if stop - start < 0.5:
            out.append(
                {
                    "offset": offset,
                    "cap": cap,
                    "seconds": 0,
                    "bytes": None,
                    "rate": None,
                    "last_byte_after_switch": round(end - base - offset, 3),
                }
            )
            continue
        n = wire.bytes_between(start, stop)
        out.append(
            {"offset": offset, "cap": cap, "seconds": round(stop - start, 3), "bytes": n, "rate": n / (stop - start)}
        )
    return out


def timetable_report(results: list[dict[str, Any]], vs: list[Variant], args: argparse.Namespace) -> str:
    lines = [
        f"max_bandwidth timetable {args.max_bandwidth_timetable_text!r} (seconds from the start: cap), bytes on "
        f"the wire per period, {args.timetable_settle:g} s left out after the start and each switch and before "
        "the next switch: "
        "measured rate / cap"
    ]
    for v in vs:
        rs = [r for r in results if "error" not in r and r["label"] == v.label]
        if v.contender != "engine":
            lines.append(
                f"  {v.label}: not applicable (no timetable: "
                + (
                    "s3transfer's TransferConfig.max_bandwidth is one fixed rate"
                    if v.contender in USES_MAX_BANDWIDTH
                    else "no cap at all"
                )
                + "; ran uncapped)"
            )
            continue
        for i, (offset, cap) in enumerate(args.max_bandwidth_timetable):
            rates = [r["periods"][i] for r in rs if r.get("periods")]
            measured = [p["rate"] for p in rates if p["rate"] is not None]
            what = f"  {v.label}, period {i + 1} (from {offset} s, cap {format_size(cap) + '/s' if cap else 'off'})"
            if not measured:
                after = ", ".join(f"{p['last_byte_after_switch']:.1f} s" for p in rates)
                lines.append(
                    f"{what}: not measured, the last byte went {after} after the switch (fewer than "
                    f"settle {args.timetable_settle:g} s + 0.5 s)"
                )
                continue
            rounds = ", ".join(
                f"{p['rate'] / MiB:.2f} MiB/s over {p['seconds']:.1f} s" for p in rates if p["rate"] is not None
            )
            med = statistics.median(measured)
            if cap:
                per_round = " ".join(f"{rate / cap:.3f}" for rate in measured)
                lines.append(
                    f"{what}: {med / MiB:.2f} MiB/s = {med / cap:.3f}x the cap (per round: {per_round}; {rounds})"
                )
            else:
                lines.append(f"{what}: {med / MiB:.2f} MiB/s, uncapped, from the switch to the last byte ({rounds})")
    return "\n".join(lines)


class SwiftStore:
    """OpenStack Swift with s3api on 127.0.0.1 (tests/support/swift_server.py), for ``--store swift``.

    Its server CPU is the sum over the Swift daemons (account, container, object, proxy and their worker
    processes) and memcached, read with psutil. Entering it puts tempauth's user into this process's
    ``AWS_*`` environment, for its own clients and every child (:func:`child_env` copies ``os.environ``):
    ``bench_dag.py --store swift`` uses it too.
    """

    def __init__(self, root: Path, workers: str) -> None:
        self.root = root
        self.workers = workers
        self.endpoint = ""
        self._context: Any = None
        self._processes: list[Any] = []

    def __enter__(self) -> SwiftStore:
        _checkout_on_path()
        from tests.support import swift_server as swift

        os.environ.update(
            {
                "AWS_ACCESS_KEY_ID": swift.ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": swift.SECRET_KEY,
                "AWS_DEFAULT_REGION": swift.REGION,
            }
        )
        workers: int | str = int(self.workers) if self.workers.isdigit() else self.workers
        self._context = swift.swift_server(self.root, workers=workers)
        server = self._context.__enter__()
        self.endpoint = server.endpoint
        self._daemons = list(server.processes.values())
        return self

    def cpu_seconds(self) -> float | None:
        import psutil

        total = 0.0
        for daemon in self._daemons:
            try:
                parent = psutil.Process(daemon.pid)
                for process in [parent, *parent.children(recursive=True)]:
                    times = process.cpu_times()
                    total += times.user + times.system
            except psutil.Error:
                continue
        return total

    def __exit__(self, *exc: object) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)


# -- the parent: rounds, table ---------------------------------------------------------------


def child_env() -> dict[str, str]:
    """Environment for the server and workers: fake credentials unless real ones are set, no IMDS."""
    env = dict(os.environ)
    env.setdefault("AWS_ACCESS_KEY_ID", "testing")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def ensure_file(directory: Path, size: int) -> Path:
    """A file of random bytes, reused across rounds and runs of the same size."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"random-{format_size(size)}.bin"
    if path.exists() and path.stat().st_size == size:
        return path
    tmp = path.with_suffix(".tmp")
    chunk = 64 * MiB
    print(f"writing {format_size(size)} of random bytes to {path} ...", file=sys.stderr, flush=True)
    with open(tmp, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class Variant:
    contender: str
    part_size: int
    concurrency: int

    @property
    def label(self) -> str:
        extra = []
        if self.contender in USES_PART_SIZE:
            extra.append(format_size(self.part_size))
        if self.contender in USES_CONCURRENCY:
            extra.append(f"c{self.concurrency or 'auto'}")
        return self.contender + (f" [{' '.join(extra)}]" if extra else "")


def variants(args: argparse.Namespace) -> list[Variant]:
    out: list[Variant] = []
    for name in args.contenders:
        sizes = args.part_sizes if name in USES_PART_SIZE else [args.part_sizes[0]]
        concs = args.concurrencies if name in USES_CONCURRENCY else [args.concurrencies[0]]
        out.extend(Variant(name, ps, c) for ps, c in product(sizes, concs))
    return out


def worker_command(args: argparse.Namespace, v: Variant, file: Path, endpoint: str, profile: bool) -> list[str]:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        v.contender,
        "--file",
        str(file),
        "--endpoint",
        endpoint,
        "--bucket",
        args.bucket,
        "--part-size",
        str(v.part_size),
        "--concurrency",
        str(v.concurrency),
        "--checksum",
        args.checksum,
        "--payload-signing",
        args.payload_signing,
        "--checksum-type",
        args.checksum_type,
    ]
    if args.https:
        cmd.append("--https")
    if v.contender == "engine-baseline":
        cmd += ["--controller-file", args.controller_file]
    if args.no_checksum_echo:
        cmd.append("--no-checksum-echo")
    if args.verify_tls:
        cmd.append("--verify-tls")
    if args.max_bandwidth:
        cmd += ["--max-bandwidth", str(args.max_bandwidth)]
    if args.max_bandwidth_timetable:
        cmd += ["--max-bandwidth-timetable", args.max_bandwidth_timetable_text]
    if profile:
        cmd += ["--profile", "--profile-timer", args.profile_timer, "--profile-top", str(args.profile_top)]
    return cmd


def run_one(args: argparse.Namespace, v: Variant, file: Path, endpoint: str, profile: bool = False) -> dict[str, Any]:
    cmd = worker_command(args, v, file, endpoint, profile)
    try:
        env = child_env()
        if args.no_crt:
            env["BOTO_DISABLE_CRT"] = "true"
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"contender": v.contender, "label": v.label, "error": f"timed out after {args.timeout} s"}
    if profile and proc.stderr:
        print(proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        return {"contender": v.contender, "label": v.label, "error": f"exit {proc.returncode}: " + "\n".join(tail)}
    record = json.loads(lines[-1])
    record["label"] = v.label
    record["requested_part_size"] = v.part_size
    record["requested_concurrency"] = v.concurrency
    return record


def ensure_bucket(args: argparse.Namespace, endpoint: str) -> None:
    os.environ.update({k: v for k, v in child_env().items() if k.startswith(("AWS_", "NO_PROXY", "no_proxy"))})
    ns = argparse.Namespace(**{**vars(args), "endpoint": endpoint})
    client = make_client(ns, 4)
    try:
        client.head_bucket(Bucket=args.bucket)
    except Exception:
        client.create_bucket(Bucket=args.bucket)


def median(records: list[dict[str, Any]], field: str) -> float:
    return statistics.median(r[field] for r in records)


def table(results: list[dict[str, Any]], vs: list[Variant]) -> str:
    ok = [r for r in results if "error" not in r]
    by_label = {v.label: [r for r in ok if r["label"] == v.label] for v in vs}
    base = next((rs for v, rs in ((v, by_label[v.label]) for v in vs) if v.contender == "boto3-default" and rs), None)
    base_mib = median(base, "mib_s") if base else None
    base_cpu = median(base, "cpu_s_per_gib") if base else None
    crt = next((rs for v, rs in ((v, by_label[v.label]) for v in vs) if v.contender == "crt" and rs), None)
    crt_mib = median(crt, "mib_s") if crt else None
    crt_cpu = median(crt, "cpu_s_per_gib") if crt else None
    seq = {v.part_size: by_label[v.label] for v in vs if v.contender == "sequential" and by_label[v.label]}
    width = max(len(v.label) for v in vs) + 2
    head = (
        f"{'contender':<{width}} {'runs':>4} {'MiB/s':>8} {'CPU s/GiB':>10} {'peak RSS MB':>12} "
        f"{'MiB/s vs b':>11} {'CPU vs b':>9} {'MiB/s vs crt':>13} {'CPU vs crt':>11} "
        f"{'MiB/s vs seq':>13} {'srv CPU s/GiB':>14}   MiB/s per round"
    )
    lines = [head, "-" * len(head)]
    for v in vs:
        rs = by_label[v.label]
        if not rs:
            errors = [r["error"] for r in results if r.get("label") == v.label and "error" in r]
            why = errors[-1].strip().splitlines()[-1][:300] if errors else ""
            lines.append(f"{v.label:<{width}} {0:>4}  (all runs failed{': ' + why if why else ''})")
            continue
        mib, cpu, rss = median(rs, "mib_s"), median(rs, "cpu_s_per_gib"), median(rs, "peak_rss_mb")
        r_mib = f"{mib / base_mib:.2f}x" if base_mib else "-"
        r_cpu = f"{cpu / base_cpu:.2f}x" if base_cpu else "-"
        c_mib = f"{mib / crt_mib:.2f}x" if crt_mib else "-"
        c_cpu = f"{cpu / crt_cpu:.2f}x" if crt_cpu else "-"
        r_seq = "-"
        if v.contender in ENGINES:
            seq_rs = seq.get(v.part_size) or next(iter(seq.values()), None)
            if seq_rs:
                r_seq = f"{mib / median(seq_rs, 'mib_s'):.2f}x"
        per_round = " ".join(f"{r['mib_s']:.0f}" for r in rs)
        srv_rs = [r for r in rs if "server_cpu_s_per_gib" in r]
        srv = f"{median(srv_rs, 'server_cpu_s_per_gib'):.2f}" if srv_rs else "-"
        lines.append(
            f"{v.label:<{width}} {len(rs):>4} {mib:>8.1f} {cpu:>10.2f} {rss:>12.0f} "
            f"{r_mib:>11} {r_cpu:>9} {c_mib:>13} {c_cpu:>11} {r_seq:>13} {srv:>14}   {per_round}"
        )
    return "\n".join(lines)


#: Contenders that honour --max-bandwidth (the engine, and s3transfer through TransferConfig.max_bandwidth).
USES_MAX_BANDWIDTH = {"engine", "boto3-default", "boto3-tuned"}


def cap_report(results: list[dict[str, Any]], vs: list[Variant], cap: int) -> str:
    """Each capped contender's measured rate (median and every round) against ``cap`` bytes per second:
    the whole upload's (create, parts, complete: what a user waits for), and the parts' on the wire
    (first UploadPart sent to last answered, every attempt's bytes: what the cap governs).
    """
    lines = [f"max_bandwidth {format_size(cap)}/s ({cap / MiB:.1f} MiB/s): measured rate / cap"]
    for v in vs:
        rs = [r for r in results if "error" not in r and r["label"] == v.label]
        if v.contender not in USES_MAX_BANDWIDTH:
            lines.append(f"  {v.label}: no cap (not supported by this contender)")
        elif rs:
            for what, rates in (
                ("whole upload", [r["size"] / r["seconds"] for r in rs]),
                ("parts on the wire", [r["parts_bytes"] / r["parts_seconds"] for r in rs if r.get("parts_seconds")]),
            ):
                if rates:
                    per_round = " ".join(f"{rate / cap:.3f}" for rate in rates)
                    lines.append(
                        f"  {v.label}, {what}: {statistics.median(rates) / MiB:.2f} MiB/s = "
                        f"{statistics.median(rates) / cap:.3f}x the cap (per round: {per_round})"
                    )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import boto3
    import botocore

    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "boto3": boto3.__version__,
        "botocore": botocore.__version__,
    }
    try:
        import awscrt

        info["awscrt"] = getattr(awscrt, "__version__", "installed")
    except ImportError:
        info["awscrt"] = None
    try:
        import moto

        info["moto"] = moto.__version__
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    return info


def store_kind(args: argparse.Namespace) -> str:
    if args.store == "swift" and not args.endpoint:
        return "store: Swift s3api (keeps no checksums)"
    return "store echoes no checksums" if args.no_checksum_echo else "store echoes checksums when asked"


def baseline_controller(rev: str) -> str:
    """``rev``'s multipart/parallelism.py, written to a temporary file (for ``engine-baseline``)."""
    root = Path(__file__).resolve().parent.parent
    text = subprocess.run(
        ["git", "-C", str(root), "show", f"{rev}:airflow_mpu_provider/multipart/parallelism.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    fd, path = tempfile.mkstemp(prefix="mpu-baseline-parallelism-", suffix=".py")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def run_parent(args: argparse.Namespace) -> int:
    command = shlex.join([sys.executable, *sys.argv])
    info = machine()
    print(f"command: {command}")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    file = ensure_file(Path(args.tmpdir), args.size)
    vs = variants(args)
    if any(v.contender == "engine-baseline" for v in vs):
        args.controller_file = baseline_controller(args.baseline_rev)
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mpu-bench-") as scratch:
        server: LocalServer | SwiftStore | None = None
        if args.endpoint:
            endpoint = args.endpoint
        elif args.store == "swift":
            server = SwiftStore(Path(scratch) / "swift", args.swift_workers).__enter__()
            endpoint = server.endpoint
        else:
            server = LocalServer(args.https, Path(scratch) / "moto.log").__enter__()
            endpoint = server.endpoint
        wire = None
        if args.max_bandwidth_timetable:
            wire = WireCounter(endpoint)
            server_endpoint, endpoint = endpoint, wire.endpoint
        where = (
            "existing"
            if args.endpoint
            else (
                f"OpenStack Swift s3api, workers={args.swift_workers}" if args.store == "swift" else "moto, own process"
            )
        )
        try:
            print(
                f"endpoint: {endpoint} ({where}{f', relay to {server_endpoint} counting bytes' if wire else ''}), "
                f"bucket: {args.bucket}, file: {file} ({format_size(args.size)})"
            )
            ensure_bucket(args, endpoint)
            for _ in range(args.warmup):  # the first upload into a fresh moto is slower: not counted
                warm = run_one(args, vs[0], file, endpoint)
                print(
                    f"  warm-up {vs[0].label}: {warm.get('mib_s', warm.get('error'))} MiB/s (not counted)",
                    file=sys.stderr,
                    flush=True,
                )
            for round_no in range(1, args.rounds + 1):
                for v in vs:
                    server_cpu = server.cpu_seconds() if server is not None else None
                    record = run_one(args, v, file, endpoint)
                    if server is not None and server_cpu is not None and "error" not in record:
                        # The whole worker's lifetime (imports, upload, HEAD, DELETE): mostly the upload.
                        record["server_cpu_s"] = round(server.cpu_seconds() - server_cpu, 3)
                        record["server_cpu_s_per_gib"] = round(record["server_cpu_s"] / (args.size / GiB), 3)
                    record["round"] = round_no
                    if wire is not None and "timetable_base" in record:
                        record["periods"] = timetable_periods(
                            record, args.max_bandwidth_timetable, wire, args.timetable_settle
                        )
                    results.append(record)
                    if "error" in record:
                        print(f"  round {round_no} {v.label}: FAILED {record['error']}", file=sys.stderr, flush=True)
                    else:
                        print(
                            f"  round {round_no} {v.label}: {record['seconds']:.2f} s, {record['mib_s']:.1f} MiB/s, "
                            f"CPU {record['cpu_s']:.2f} s (user {record['cpu_user']:.2f} "
                            f"sys {record['cpu_sys']:.2f}), peak RSS {record['peak_rss_mb']:.0f} MB"
                            + (f", server CPU {record['server_cpu_s']:.2f} s" if "server_cpu_s" in record else "")
                            + (f", settled at {record['workers']}" if v.contender in ENGINES else ""),
                            file=sys.stderr,
                            flush=True,
                        )
                        if args.trace and "trace" in record:
                            print(trace_report(record), file=sys.stderr, flush=True)
            profile_record = None
            if args.profile:
                engines = [v for v in vs if v.contender in ENGINES] or [
                    Variant("engine", args.part_sizes[0], args.concurrencies[0])
                ]
                print(f"\nprofiled run of {engines[0].label} (not in the table):")
                profile_record = run_one(args, engines[0], file, endpoint, profile=True)
                print(f"profiled run: {json.dumps(profile_record)}")
        finally:
            if wire is not None:
                wire.close()
            if server is not None:
                server.__exit__()
    elapsed = time.monotonic() - started
    if results:
        print(
            f"\nsize {format_size(args.size)}, {args.rounds} rounds, medians; checksum for engine: {args.checksum}; "
            f"{'HTTPS' if args.https or endpoint.startswith('https') else 'plain HTTP'}; "
            f"payload signing {args.payload_signing}{'; BOTO_DISABLE_CRT' if args.no_crt else ''}"
            f"; {store_kind(args)}"
            f"{f'; max_bandwidth {format_size(args.max_bandwidth)}/s' if args.max_bandwidth else ''}"
            f"{f'; timetable {args.max_bandwidth_timetable_text}' if args.max_bandwidth_timetable else ''}; "
            f"took {elapsed:.0f} s"
        )
        print(table(results, vs))
        if args.max_bandwidth:
            print(cap_report(results, vs, args.max_bandwidth))
        if args.max_bandwidth_timetable:
            print(timetable_report(results, vs, args))
        failures = [r for r in results if "error" in r]
        if failures:
            print(f"{len(failures)} run(s) failed; first error: {failures[0]['error']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "command": command,
                    "machine": info,
                    "endpoint": endpoint,
                    "size": args.size,
                    "rounds": args.rounds,
                    "results": results,
                    "profile": profile_record,
                },
                f,
                indent=2,
            )
        print(f"raw results: {args.json}")
    if args.cleanup:
        file.unlink(missing_ok=True)
    return 1 if any("error" in r for r in results) else 0


# -- command line -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from_engine = _engine_defaults()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=GiB, help="file size, e.g. 256MiB, 1GiB, 8GiB (default 1GiB)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of A B C D ... (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed uploads before the rounds (default 1)")
    p.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated subset of {', '.join(CONTENDERS)} (default: all)",
    )
    p.add_argument("--endpoint", help="use this S3 endpoint (MinIO, real S3...) instead of starting moto")
    p.add_argument("--bucket", default="mpu-bench", help="bucket (created if missing; default mpu-bench)")
    add_store_arguments(p)
    p.add_argument("--https", action="store_true", help="moto over HTTPS with a self-signed certificate")
    p.add_argument("--verify-tls", action="store_true", help="verify the endpoint's certificate (default: not)")
    p.add_argument(
        "--part-size",
        default=format_size(from_engine["part_size"]),
        help="part size(s) for engine, boto3-tuned, sequential; comma-separated list for a grid "
        f"(default {format_size(from_engine['part_size'])}: plan_parts' choice for the file)",
    )
    p.add_argument(
        "--concurrency",
        default=str(from_engine["concurrency"]),
        help="parallel parts for engine and boto3-tuned; comma-separated list for a grid "
        f"(default {from_engine['concurrency'] or 'auto'}: adaptive for the engine, 8 for boto3-tuned)",
    )
    p.add_argument(
        "--checksum",
        default="default",
        help="engine checksum_algorithm: default (UploadOptions' default: CRC32C with awscrt), "
        "CRC32C, CRC32, SHA256, ... or none (Content-MD5 only)",
    )
    p.add_argument(
        "--checksum-type",
        default="default",
        choices=("default", "FULL_OBJECT", "COMPOSITE"),
        help="engine checksum_type: default (UploadOptions' default), FULL_OBJECT or COMPOSITE",
    )
    p.add_argument(
        "--payload-signing",
        choices=("auto", "off"),
        default="auto",
        help="auto: botocore decides (SHA-256 of every body over plain HTTP); off: "
        "s3.payload_signing_enabled=False for every contender (experiment)",
    )
    p.add_argument(
        "--no-crt",
        action="store_true",
        help="workers run with BOTO_DISABLE_CRT=true: botocore's Python SigV4 signer, no CRC32C "
        "(the engine then defaults to CRC32)",
    )
    p.add_argument(
        "--no-checksum-echo",
        action="store_true",
        help="a store that echoes no part checksums (on-prem stores without checksum support): "
        "the engine's parts lose x-amz-sdk-checksum-algorithm before signing, so moto "
        "answers with the ETag alone and the engine sends and verifies an MD5 with every "
        "part. Without it moto echoes, as AWS does",
    )
    p.add_argument(
        "--assume-checksum-echo",
        action="store_true",
        help="kept for old command lines: echo is now the default (the engine names the "
        "algorithm, as boto3 and CRT do, and moto echoes)",
    )
    p.add_argument(
        "--max-bandwidth",
        type=parse_size,
        default=None,
        help="cap in bytes per second, e.g. 32MiB: the engine's max_bandwidth and s3transfer's "
        "TransferConfig.max_bandwidth; the report compares each measured rate with it",
    )
    p.add_argument(
        "--max-bandwidth-timetable",
        default=None,
        metavar="S:RATE,...",
        help="the engine's max_bandwidth as a timetable: seconds from the upload's start -> cap, e.g. "
        "'0:8MiB,6:32MiB,12:off' (off: uncapped); the report gives each period's rate on the wire / "
        "its cap (engine only: s3transfer has no timetable)",
    )
    p.add_argument(
        "--timetable-settle",
        type=float,
        default=1.0,
        help="seconds left out of each period after its start and before the next switch (default 1)",
    )
    p.add_argument("--json", help="save raw results to this file")
    p.add_argument("--profile", action="store_true", help="after the rounds, run the engine once under cProfile")
    p.add_argument(
        "--profile-timer",
        choices=("cpu", "wall"),
        default="cpu",
        help="cProfile clock: per-thread CPU time (default) or wall time",
    )
    p.add_argument("--profile-top", type=int, default=25)
    p.add_argument("--timeout", type=float, default=600, help="seconds before a worker is killed (default 600)")
    p.add_argument(
        "--trace",
        action="store_true",
        help="print, per engine run, the adaptive controller's limit over time and part latencies by limit",
    )
    p.add_argument(
        "--baseline-rev",
        default="8f13154",
        help="git revision whose multipart/parallelism.py the engine-baseline contender runs (default 8f13154: "
        "the controller before issue #22's second pass)",
    )
    p.add_argument("--controller-file", help=argparse.SUPPRESS)
    p.add_argument(
        "--tmpdir",
        default=os.path.join(tempfile.gettempdir(), "mpu-bench"),
        help="where the random file is written and kept for reuse (default $TMPDIR/mpu-bench)",
    )
    p.add_argument("--cleanup", action="store_true", help="delete the random file at the end")
    p.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = set(args.contenders) - set(CONTENDERS)
    if unknown:
        p.error(f"unknown contender(s) {', '.join(sorted(unknown))}; choose from {', '.join(CONTENDERS)}")
    args.part_sizes = size_list(args.part_size)
    args.concurrencies = int_list(args.concurrency)
    args.part_size_value = args.part_sizes[0]
    args.concurrency_value = args.concurrencies[0]
    lowered = args.checksum.lower()
    args.checksum_algorithm = (
        None if lowered in ("none", "md5", "") else "default" if lowered == "default" else (args.checksum.upper())
    )
    args.max_bandwidth_timetable_text = args.max_bandwidth_timetable
    if args.max_bandwidth_timetable:
        try:
            args.max_bandwidth_timetable = parse_timetable(args.max_bandwidth_timetable)
        except argparse.ArgumentTypeError as exc:
            p.error(f"--max-bandwidth-timetable: {exc}")
        if args.max_bandwidth:
            p.error("--max-bandwidth and --max-bandwidth-timetable exclude each other")
    if args.store == "swift" and args.https:
        p.error("--store swift serves plain HTTP only")
    if args.worker and not (args.file and args.endpoint):
        p.error("--worker needs --file and --endpoint")
    return args


def _checkout_on_path() -> None:
    """This checkout first on sys.path (a worker runs this file as a script, from benchmarks/)."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)


def _engine_defaults() -> dict[str, int]:
    """The engine's defaults: automatic part size and adaptive parallelism (``auto``)."""
    _checkout_on_path()
    return {"part_size": AUTO, "concurrency": AUTO}  # plan_parts' automatic size, adaptive parallelism


def add_store_arguments(p: argparse.ArgumentParser) -> None:
    """``--store`` and ``--swift-workers``: which local store to start (bench_dag.py takes the same)."""
    p.add_argument(
        "--store",
        choices=("moto", "swift"),
        default="moto",
        help="the local store to start: moto (default) or OpenStack Swift with s3api (needs the Debian "
        "swift packages, see tests/support/swift_server.py); ignored with --endpoint",
    )
    p.add_argument(
        "--swift-workers",
        default="auto",
        help="with --store swift: worker processes per Swift server ('auto': one per core; 0: none)",
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        return run_server(args)
    if args.worker:
        return run_worker(args)
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
