"""Shared fixtures: moto in-process (unit tests) and files of known content."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest

from airflow_mpu_provider.multipart.units import MiB
from tests.support.local_airflow import ACCESS_KEY, REGION, SECRET_KEY

# Never let a test reach real AWS: credentials and region are fake, the metadata service is off.
os.environ.setdefault("AWS_ACCESS_KEY_ID", ACCESS_KEY)
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

__all__ = [
    "MiB",
    "PutPartHooks",
    "incomplete_uploads",
    "make_file",
    "send_part",
    "sha256_file",
    "sha256_object",
]  # what the test modules import


def make_file(path: Path, size: int, seed: int = 0) -> Path:
    """A file of ``size`` pseudo-random bytes (fast, reproducible, not compressible)."""
    import random

    rng = random.Random(seed)
    with path.open("wb") as f:
        remaining = size
        while remaining:
            n = min(remaining, 4 * MiB)
            f.write(rng.randbytes(n))
            remaining -= n
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def sha256_object(client, bucket: str, key: str) -> str:
    h = hashlib.sha256()
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    while chunk := body.read(8 * MiB):
        h.update(chunk)
    return h.hexdigest()


def incomplete_uploads(client, bucket: str, prefix: str = "") -> list[dict]:
    """Incomplete multipart uploads in ``bucket`` (under ``prefix``: a test checks its own keys)."""
    return client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])


def send_part(upload, number: int, data: bytes):
    """``upload.put_part`` of ``data`` as part ``number``, with the digest the engine sends: the upload's
    checksum, or Content-MD5 when it has none. Returns the part's ``PartRecord``."""
    from airflow_mpu_provider.multipart.checksums.digests import digest_part

    algorithm = upload.checksum_algorithm
    return upload.put_part(number, data, digest_part(number, data, algorithm=algorithm, with_md5=algorithm is None))


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server in its own process on a free loopback port (its state is not mock_aws's)."""
    from tests.support.local_airflow import moto_server_process

    with moto_server_process() as endpoint:
        yield endpoint
        # Whatever the tests did, they must not leave incomplete uploads (billed, invisible) behind.
        from tests.support.local_airflow import s3_client

        client = s3_client(endpoint)
        left = {
            bucket["Name"]: [u["Key"] for u in incomplete_uploads(client, bucket["Name"])]
            for bucket in client.list_buckets()["Buckets"]
        }
        left = {bucket: keys for bucket, keys in left.items() if keys}
        assert not left, f"incomplete multipart uploads left on the test server after the suite: {left}"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(scope="session")
def swift(tmp_path_factory) -> Iterator[object]:
    """An all-in-one OpenStack Swift with s3api on loopback (``tests/support/swift_server.py``): the
    second real S3 store the suite runs against. Missing packages skip its tests, or fail them under CI."""
    from tests.support.swift_server import missing_message, missing_programs, s3_client, swift_server

    missing = missing_programs()
    if missing:
        if _in_ci():
            pytest.fail(f"{missing_message(missing)}; CI must run the Swift tests", pytrace=False)
        pytest.skip(missing_message(missing))
    with swift_server(tmp_path_factory.mktemp("swift")) as server:
        yield server
        client = s3_client(server.endpoint)
        left = {
            bucket["Name"]: [u["Key"] for u in incomplete_uploads(client, bucket["Name"])]
            for bucket in client.list_buckets()["Buckets"]
        }
        left = {bucket: keys for bucket, keys in left.items() if keys}
        assert not left, f"incomplete multipart uploads left on Swift after the suite: {left}"


@pytest.fixture(scope="session")
def swift_endpoint(swift) -> str:
    """The S3 endpoint of the session's Swift (credentials: ``tests.support.swift_server``)."""
    return swift.endpoint


#: The bucket the Swift tests use (tests/swift, tests/e2e/test_swift_dag.py).
SWIFT_BUCKET = "swift-bucket"


@pytest.fixture(scope="session")
def swift_s3(swift_endpoint):
    """A client straight to Swift (not through a proxy), for setting up and checking; ``SWIFT_BUCKET`` exists."""
    from tests.support.swift_server import s3_client

    client = s3_client(swift_endpoint)
    client.create_bucket(Bucket=SWIFT_BUCKET)
    return client


@pytest.fixture
def proxy(moto_endpoint) -> Iterator[object]:
    """A counting, fault-injecting proxy in front of the server: what crosses the wire, measured."""
    from tests.support.s3_proxy import S3Proxy

    with S3Proxy(moto_endpoint, seed=1234) as p:
        yield p


@pytest.fixture
def s3(moto_endpoint):
    """A client straight to the server (not through the proxy), for setting up and checking."""
    from tests.support.local_airflow import s3_client

    return s3_client(moto_endpoint)


@pytest.fixture
def mock_s3() -> Iterator[object]:
    """An in-process moto S3 with one bucket, ``test-bucket``."""
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket="test-bucket")
        yield client


class PutPartHooks:
    """What runs around every ``MultipartUpload.put_part`` while the ``put_part_hooks`` fixture is active.

    ``before(number)`` runs before the part is sent: raise from it to fail that part as a dropped
    connection would. ``after(number)`` runs once the part is stored and before the engine learns of it:
    set an event from it, or wait on one to hold the part's worker there. Either may be None.
    """

    def __init__(self) -> None:
        self.before: Callable[[int], None] | None = None
        self.after: Callable[[int], None] | None = None

    def fail_part(self, part: int, error: BaseException) -> None:
        """Make part ``part`` fail with ``error`` before anything of it is sent."""

        def before(number: int) -> None:
            if number == part:
                raise error

        self.before = before

    def clear(self) -> None:
        """Back to the real put_part (a retry that must not fail again)."""
        self.before = self.after = None


@pytest.fixture
def put_part_hooks(monkeypatch) -> PutPartHooks:
    """Every ``MultipartUpload.put_part`` (the engine's, the operator's, the hook's) runs ``PutPartHooks``."""
    from airflow_mpu_provider.multipart.upload import MultipartUpload

    hooks = PutPartHooks()
    real = MultipartUpload.put_part

    def put_part(self, number, *args, **kwargs):
        if hooks.before is not None:
            hooks.before(number)
        record = real(self, number, *args, **kwargs)
        if hooks.after is not None:
            hooks.after(number)
        return record

    monkeypatch.setattr(MultipartUpload, "put_part", put_part)
    return hooks
