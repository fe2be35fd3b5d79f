"""Whole-file checksums of a big upload, fresh and resumed, against an independent CRC of the file.

    python benchmarks/full_object_check.py --size-mib 1024 --algorithms CRC32C CRC64NVME

For each algorithm: uploads a random file to moto's S3 server (its own process, on 127.0.0.1) with
``checksum_type="FULL_OBJECT"``; then uploads it again after a simulated crash that left the first half
of the parts stored (``resume_upload_id``: those parts are verified and their CRCs combined with the
rest). Each time it reads back HeadObject(ChecksumMode=ENABLED) and compares the store's value and the
engine's result with the CRC of the local file computed by an independent implementation (the
``crc32c`` package, awscrt's ``crc64nvme``, ``zlib``), streamed in 16 MiB reads. moto computes its
value from the bytes it holds and ignores the one the client sends, so agreement is not circular.
Run by hand (a few GiB go through moto). Exit status 1 if any value differs.
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import crc32c
from awscrt import checksums

from airflow_mpu_provider.multipart import UploadOptions, upload_file
from airflow_mpu_provider.multipart.checksums.digests import digest_part
from airflow_mpu_provider.multipart.parts.plan import plan_parts
from airflow_mpu_provider.multipart.upload import MultipartUpload
from tests.support.local_airflow import moto_server_process, s3_client

MiB = 1024 * 1024
BUCKET = "full-object-check"
#: Independent CRCs, continued over 16 MiB reads: (update, width in bytes).
REFERENCES = {
    "CRC32C": (lambda data, crc: crc32c.crc32c(data, crc), 4),
    "CRC64NVME": (lambda data, crc: checksums.crc64nvme(data, crc), 8),
    "CRC32": (lambda data, crc: zlib.crc32(data, crc), 4),
}


def independent_crc(path: Path, algorithm: str) -> str:
    update, width = REFERENCES[algorithm]
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(16 * MiB):
            crc = update(chunk, crc)
    return base64.b64encode(crc.to_bytes(width, "big")).decode()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def crashed_upload(client, path: Path, key: str, algorithm: str, part_size: int) -> tuple[str, int]:
    """An upload holding the first half of the file's parts, as a run killed half-way leaves it."""
    plan = plan_parts(path.stat().st_size, part_size)
    upload = MultipartUpload(client, BUCKET, key, checksum_algorithm=algorithm, checksum_type="FULL_OBJECT")
    upload_id = upload.create()
    with path.open("rb") as f:
        for part in list(plan)[: plan.count // 2]:
            f.seek(part.offset)
            data = f.read(part.length)
            upload.put_part(part.number, data, digest_part(part.number, data, algorithm=algorithm, with_md5=True))
    return upload_id, plan.count // 2


def check(client, path: Path, algorithm: str, part_size: int, *, resume: bool) -> bool:
    key = f"{algorithm}-{'resumed' if resume else 'fresh'}"
    upload_id, stored = crashed_upload(client, path, key, algorithm, part_size) if resume else (None, 0)
    options = UploadOptions(checksum_algorithm=algorithm, checksum_type="FULL_OBJECT", progress_interval=3600)
    started, cpu = time.monotonic(), cpu_seconds()
    result = upload_file(client, path, BUCKET, key, part_size=part_size, options=options, resume_upload_id=upload_id)
    seconds, cpu = time.monotonic() - started, cpu_seconds() - cpu
    head = client.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    reported = head.get(f"Checksum{algorithm}")
    expected = independent_crc(path, algorithm)
    ok = reported == expected == result.checksum and head.get("ChecksumType") == "FULL_OBJECT"
    print(
        f"{algorithm:9} {'resumed' if resume else 'fresh':7} parts {result.parts} (resumed {result.parts_resumed}, "
        f"crashed run left {stored}): store {reported} {head.get('ChecksumType')}, engine {result.checksum}, "
        f"independent {expected} -> {'EQUAL' if ok else 'DIFFERENT'}; {seconds:.1f} s, client CPU {cpu:.2f} s"
    )
    client.delete_object(Bucket=BUCKET, Key=key)  # moto keeps objects in memory
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--part-size-mib", type=int, default=16)
    p.add_argument("--algorithms", nargs="+", default=["CRC32C", "CRC64NVME"], choices=sorted(REFERENCES))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as scratch, moto_server_process() as endpoint:
        path = Path(scratch) / "file.bin"
        with path.open("wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MiB))
        client = s3_client(endpoint)
        client.create_bucket(Bucket=BUCKET)
        results = [
            check(client, path, algorithm, args.part_size_mib * MiB, resume=resume)
            for algorithm in args.algorithms
            for resume in (False, True)
        ]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
