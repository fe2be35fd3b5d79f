"""An all-in-one OpenStack Swift with its S3 API (``s3api``) on 127.0.0.1, for tests and benchmarks.

A second real S3 implementation beside moto: Swift 2.30 as Debian packages it (``swift swift-proxy
swift-object swift-container swift-account memcached``). :func:`swift_server` writes one-replica rings
over plain directories (``mount_check = false``) and the daemons' configurations into a temporary
directory, starts memcached and the account, container, object and proxy servers on free loopback
ports, waits (bounded) until each answers its healthcheck, and stops them by their own process
groups. Each daemon logs to its own file there (``<name>.log``); a start-up failure shows their tails.

S3 credentials are tempauth's user ``test:tester`` with the key ``testing`` (access key
``test:tester``, secret ``testing``); requests are path-style SigV4 in ``us-east-1``.

Swift reads its hash path prefix and storage policies from ``/etc/swift/swift.conf`` (installed by the
``swift`` package) whatever ``swift_dir`` says; the rings written here serve its default policy 0
(``object.ring.gz``), as the package's file declares it.

Standard library only (boto3 where a client is asked for): ``dev.py`` and the benchmarks use it too.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: The Debian packages that provide what :func:`swift_server` runs.
PACKAGES = ("swift", "swift-proxy", "swift-object", "swift-container", "swift-account", "memcached")
#: The programs it runs, each from one of :data:`PACKAGES`.
PROGRAMS = (
    "swift-ring-builder",
    "swift-account-server",
    "swift-container-server",
    "swift-object-server",
    "swift-proxy-server",
    "memcached",
)
ACCESS_KEY = "test:tester"
SECRET_KEY = "testing"
REGION = "us-east-1"
#: S3 allows 10,000 parts; s3api's own default is 1,000, and SLO's manifests must hold as many segments.
MAX_PARTS = 10_000
DAEMONS = ("account", "container", "object", "proxy")
#: The proxy's middleware, as Swift's own all-in-one orders it; s3api must come before the auth (tempauth).
PIPELINE = (
    "catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl ratelimit "
    "s3api tempauth copy slo dlo versioned_writes proxy-logging proxy-server"
)


def missing_programs() -> list[str]:
    """The programs of :data:`PROGRAMS` not on PATH (nor in /usr/sbin, /usr/bin: memcached's home)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
    return [program for program in PROGRAMS if shutil.which(program, path=path) is None]


def missing_message(missing: list[str]) -> str:
    return (
        f"OpenStack Swift is not installed (missing: {', '.join(missing)}); install the Debian/Ubuntu "
        f"packages {' '.join(PACKAGES)} (`python3 dev.py test` does so when run as root)"
    )


def s3_client(endpoint: str, **config: object):
    """A boto3 S3 client for ``endpoint`` with Swift's tempauth credentials (path-style, SigV4, us-east-1)."""
    from tests.support import local_airflow

    config = {"s3": {"addressing_style": "path"}, "signature_version": "s3v4", **config}
    return local_airflow.s3_client(endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, **config)


def aws_connection(endpoint: str, **extra: object) -> str:
    """The JSON form of an Airflow AWS connection to Swift at ``endpoint`` (an ``AIRFLOW_CONN_*`` value)."""
    import json

    return json.dumps(
        {
            "conn_type": "aws",
            "login": ACCESS_KEY,
            "password": SECRET_KEY,
            "extra": {"endpoint_url": endpoint, "region_name": REGION, **extra},
        }
    )


def _free_port() -> int:
    """A port free now; another process may take it before a daemon binds it (see :func:`swift_server`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: How many times :func:`swift_server` starts afresh on new ports when one it picked was taken first.
START_ATTEMPTS = 4
#: What a daemon that could not bind its port logs (Swift after its bind_timeout, memcached at once).
_BIND_FAILED = ("Could not bind to", "Address already in use")


class _PortTaken(RuntimeError):
    """A port picked for a daemon was bound by another process before the daemon could bind it."""


def _socket_inodes(pid: int) -> set[str] | None:
    """The inodes of the sockets process ``pid`` holds (None where /proc cannot tell: not Linux)."""
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return None
    return {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}


def _listeners(port: int) -> set[str] | None:
    """The inodes of the TCP sockets listening on ``port`` (IPv4), from /proc/net/tcp (None: no /proc)."""
    try:
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    found = set()
    for row in rows:
        fields = row.split()
        if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            found.add(fields[9])
    return found


def _port_state(process: subprocess.Popen, port: int) -> str:
    """``"ours"``: only ``process`` listens on ``port``; ``"taken"``: another process does too (or
    instead); ``"free"``: nobody yet; ``"unknown"``: /proc cannot tell (then the healthcheck decides)."""
    listeners, ours = _listeners(port), _socket_inodes(process.pid)
    if listeners is None or ours is None:
        return "unknown"
    if not listeners:
        return "free"
    return "ours" if listeners <= ours else "taken"


@dataclass
class SwiftServer:
    """A running all-in-one Swift: its S3 endpoint, its directory and its processes (name -> Popen)."""

    endpoint: str
    root: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items()}

    def logs(self, tail: int = 3000) -> str:
        """The end of every daemon's log, for a failure message."""
        parts = []
        for log in sorted(self.root.glob("*.log")):
            text = log.read_text(errors="replace")
            parts.append(f"--- {log.name} (last {tail} characters) ---\n{text[-tail:]}")
        return "\n".join(parts)


def _write_configs(root: Path, ports: dict[str, int], *, workers: int | str) -> None:
    user = getpass.getuser()
    devices = root / "node"
    (devices / "d1").mkdir(parents=True, exist_ok=True)
    common = f"""[DEFAULT]
bind_ip = 127.0.0.1
user = {user}
swift_dir = {root}
devices = {devices}
mount_check = false
workers = {workers}
log_name = {{name}}
log_level = INFO
# No syslog here: the daemons log to the console (stderr, kept in <name>.log); swift falls back to
# syslog over UDP when /dev/log is missing, so that goes to an unused loopback port instead.
log_udp_host = 127.0.0.1
log_udp_port = {ports["syslog"]}
# A port taken by another process is not coming back: give up at once and let swift_server pick anew.
bind_timeout = 1
"""
    for name in ("account", "container", "object"):
        (root / f"{name}-server.conf").write_text(
            common.format(name=name)
            + f"""bind_port = {ports[name]}

[pipeline:main]
pipeline = healthcheck {name}-server

[app:{name}-server]
use = egg:swift#{name}

[filter:healthcheck]
use = egg:swift#healthcheck
"""
        )
    (root / "proxy-server.conf").write_text(
        common.format(name="proxy")
        + f"""bind_port = {ports["proxy"]}

[pipeline:main]
pipeline = {PIPELINE}

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{ports["memcached"]}

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:bulk]
use = egg:swift#bulk

[filter:tempurl]
use = egg:swift#tempurl

[filter:ratelimit]
use = egg:swift#ratelimit

[filter:s3api]
use = egg:swift#s3api
location = {REGION}
max_upload_part_num = {MAX_PARTS}
# S3's minimum part size (5 MiB; the last part may be smaller): s3api's default, written out.
min_segment_size = 5242880

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = {SECRET_KEY} .admin

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo
max_manifest_segments = {MAX_PARTS}
max_manifest_size = 16777216

[filter:dlo]
use = egg:swift#dlo

[filter:versioned_writes]
use = egg:swift#versioned_writes
"""
    )


_RING_SCRIPT = """
import sys
from swift.common.ring import RingBuilder

root = sys.argv[1]
for name, port in zip(("account", "container", "object"), sys.argv[2:]):
    builder = RingBuilder(6, 1, 1)  # 2^6 partitions, one replica, parts may move any time
    builder.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1", "port": int(port), "device": "d1", "weight": 100})
    builder.rebalance()
    builder.get_ring().save(f"{root}/{name}.ring.gz")
"""


def _build_rings(root: Path, ports: dict[str, int], env: dict[str, str]) -> None:
    """One ring per server over its one device, written by Swift's own RingBuilder in one process (what
    ``swift-ring-builder create/add/rebalance`` does, nine processes and ~8 s on 2 busy cores)."""
    python = _swift_python()
    ring_ports = [str(ports[name]) for name in ("account", "container", "object")]
    done = subprocess.run(
        [python, "-c", _RING_SCRIPT, str(root), *ring_ports], env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"building Swift's rings with {python} failed:\n{done.stdout}\n{done.stderr}")


def _swift_python() -> str:
    """The interpreter Swift's programs run with (their ``#!`` line), which can import ``swift``."""
    program = shutil.which("swift-ring-builder", path=_daemon_env()["PATH"])
    with open(str(program), "rb") as f:
        first = f.readline().decode(errors="replace")
    if first.startswith("#!"):
        words = first[2:].split()
        if words and words[0].endswith("/env") and len(words) > 1:
            return words[1]
        if words:
            return words[0]
    return "/usr/bin/python3"


def _daemon_env() -> dict[str, str]:
    """The daemons are the system's Python programs: nothing of the test interpreter's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join([env.get("PATH", ""), "/usr/sbin", "/usr/bin"])
    return env


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=2) as answer:
            return answer.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _stop(processes: dict[str, subprocess.Popen]) -> None:
    """SIGTERM each daemon's own process group (each was started as its leader), SIGKILL what lingers."""
    for process in processes.values():
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for process in processes.values():
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@contextlib.contextmanager
def swift_server(root: Path, *, workers: int | str = 0, start_timeout: float = 60) -> Iterator[SwiftServer]:
    """Start an all-in-one Swift with s3api under ``root`` (created; kept afterwards, with the logs).

    ``workers=0`` runs each server in one process (the tests); the benchmark may ask for more, as a
    production proxy runs one per core.

    The daemons' ports are picked free (the rings must name them before the servers start) and bound
    by the daemons a moment later: another process may take one in between. A daemon that finds its
    port taken exits (or, with SO_REUSEPORT, would share it): that is seen by who listens on the port
    (/proc) or by the daemon's bind error, and the whole start is repeated on new ports, up to
    :data:`START_ATTEMPTS` times.
    """
    missing = missing_programs()
    if missing:
        raise FileNotFoundError(missing_message(missing))
    for attempt in range(1, START_ATTEMPTS + 1):
        attempt_root = root if attempt == 1 else root / f"start-{attempt}"
        try:
            server = _start(attempt_root, workers=workers, start_timeout=start_timeout)
        except _PortTaken:
            if attempt == START_ATTEMPTS:
                raise
            continue
        try:
            yield server
        finally:
            _stop(server.processes)
        return


def _start(root: Path, *, workers: int | str, start_timeout: float) -> SwiftServer:
    """One start on newly picked ports: the running server, or _PortTaken (its daemons stopped)."""
    root.mkdir(parents=True, exist_ok=True)
    ports = {name: _free_port() for name in (*DAEMONS, "memcached", "syslog")}
    env = _daemon_env()
    _write_configs(root, ports, workers=workers)
    _build_rings(root, ports, env)
    server = SwiftServer(endpoint=f"http://127.0.0.1:{ports['proxy']}", root=root)
    memcached = ["memcached", "-l", "127.0.0.1", "-p", str(ports["memcached"]), "-U", "0", "-m", "64", "-t", "1"]
    if os.geteuid() == 0:
        memcached += ["-u", "root"]  # memcached refuses to run as root unless told to
    commands = {"memcached": memcached}
    for name in DAEMONS:
        commands[name] = [f"swift-{name}-server", str(root / f"{name}-server.conf"), "--verbose"]
    try:
        for name, command in commands.items():
            with (root / f"{name}.log").open("ab") as log:
                server.processes[name] = subprocess.Popen(
                    command,
                    env=env,
                    cwd=root,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        deadline = time.monotonic() + start_timeout
        waiting = dict.fromkeys((*DAEMONS, "memcached"))
        while waiting:
            for name in list(waiting):
                state = _port_state(server.processes[name], ports[name])
                if state == "taken":
                    raise _PortTaken(f"port {ports[name]} of {name} was taken by another process")
                answers = _listening if name == "memcached" else _healthy
                if state in ("ours", "unknown") and answers(ports[name]):
                    del waiting[name]
            dead = {name: p.returncode for name, p in server.processes.items() if p.poll() is not None}
            if dead:
                logs = {name: (root / f"{name}.log").read_text(errors="replace") for name in dead}
                if any(failure in log for log in logs.values() for failure in _BIND_FAILED):
                    raise _PortTaken(f"a daemon could not bind its port ({dead})")
            if dead or (waiting and time.monotonic() > deadline):
                problem = f"exited ({dead})" if dead else f"not healthy within {start_timeout} s ({list(waiting)})"
                raise RuntimeError(f"Swift did not start: {problem}\n{server.logs()}")
            if waiting:
                time.sleep(0.1)
    except BaseException:
        _stop(server.processes)
        raise
    return server
