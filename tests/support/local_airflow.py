"""A local S3 endpoint and an Airflow environment for it: shared by the tests and the README's demo.

Everything listens on 127.0.0.1 only. The S3 endpoint is moto's server in a thread of the calling
process (or, with ``moto_server_process``, in its own process so a test can kill the client side
without touching the server).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
from botocore.config import Config

#: Credentials for the local endpoint: recognisable, so tests can scan logs for them.
ACCESS_KEY = "AKIAMPUTESTACCESSKEY"
SECRET_KEY = "mpu-test-secret-key-DO-NOT-LEAK-0123456789"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on a free loopback port, in a thread; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def wait_for_port(port: int, process: subprocess.Popen, *, timeout: float = 30, what: str = "server") -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``; fail early if ``process`` died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start listening on 127.0.0.1:{port}") from None
            time.sleep(0.1)


def _listening_on(process: subprocess.Popen, port: int) -> bool:
    """Whether ``process`` itself has a socket listening on ``port`` (not merely anybody)."""
    import psutil

    try:
        connections = psutil.Process(process.pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections)


@contextmanager
def moto_server_process(**env: str) -> Iterator[str]:
    """A moto S3 server in its own process (``env``: extra settings such as moto's); yields its URL.

    The port is picked free and bound by moto a moment later: another process (a concurrent session)
    may take it in between. So the server is ready only once moto itself listens there; if it exits
    first (its bind failed), it is started again on a new port, up to 4 times."""
    for attempt in range(1, 5):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while proc.poll() is None and not _listening_on(proc, port):
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait(10)
                raise RuntimeError(f"moto server did not start listening on 127.0.0.1:{port} within 30 s")
            time.sleep(0.1)
        if proc.poll() is None:
            break
        if attempt == 4:
            raise RuntimeError(f"moto server exited before listening on 127.0.0.1:{port} (4 ports tried)")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def s3_client(endpoint: str, *, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY, **config: object):
    """A boto3 S3 client for a local test store (moto's credentials unless others are given)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(retries={"mode": "standard", "max_attempts": 3}, **config),
    )


#: ``s3_client(url, **SIGNED_PAYLOAD)``: a client whose payload signing is set, as over HTTPS an MD5 spares
#: nothing; its parts drop the MD5 once the store echoes checksums (over plain HTTP with payload signing
#: left to botocore, every part carries one: ``multipart/signing.md5_spares_the_payload_hash``).
SIGNED_PAYLOAD = {"s3": {"payload_signing_enabled": True}}


def store_echoes_no_checksums(client) -> None:
    """Make ``client``'s store one that echoes no part checksum, as on-prem stores without checksum support.

    moto (like AWS SDK-aware stores) echoes a part's ``x-amz-checksum-*`` only when the request names the
    algorithm in ``x-amz-sdk-checksum-algorithm``, which the engine sends; dropping that header before
    signing makes moto answer with the ETag alone, so every part must carry (and be verified by) its MD5.
    """

    def unname_the_algorithm(request, **_):
        for name in [h for h in request.headers if h.lower() == "x-amz-sdk-checksum-algorithm"]:
            del request.headers[name]

    client.meta.events.register("before-sign.s3.UploadPart", unname_the_algorithm, unique_id="store-echoes-nothing")


def aws_connection(endpoint: str, **extra: object) -> str:
    """The JSON form of an Airflow AWS connection to ``endpoint``, for an ``AIRFLOW_CONN_*`` variable."""
    return json.dumps(
        {
            "conn_type": "aws",
            "login": ACCESS_KEY,
            "password": SECRET_KEY,
            "extra": {"endpoint_url": endpoint, "region_name": REGION, **extra},
        }
    )


def airflow_environment(home: Path, *, endpoint: str, dags_folder: Path, **extra: str) -> dict[str, str]:
    """Environment for an ``airflow`` process with its own home, SQLite DB and an ``aws_default`` to ``endpoint``."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW_CONN_AWS_DEFAULT": aws_connection(endpoint),
            # The S3 client must never reach a real AWS endpoint or metadata service.
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )
    env.update(extra)
    return env


def airflow_cli(env: dict[str, str], *args: str, timeout: float = 600, check: bool = True):
    """Run the ``airflow`` CLI of this interpreter's environment."""
    airflow = Path(sys.executable).with_name("airflow")
    return subprocess.run([str(airflow), *args], env=env, capture_output=True, text=True, timeout=timeout, check=check)
