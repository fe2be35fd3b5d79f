#!/usr/bin/env python3
"""The operator through Airflow itself, against what users would otherwise use.

Each round runs three DAGs with ``airflow dags test`` (a fresh process each, contenders alternating):

* ``mpu``: MultipartUploadOperator with its defaults;
* ``local_to_s3``: the amazon provider's LocalFilesystemToS3Operator (boto3 ``upload_file``), replace=True;
* ``idle``: one PythonOperator that does nothing: what starting Airflow, parsing and running a task costs.

Wall time, CPU (user + system of the ``airflow`` process and everything it waited for, from wait4) and
peak RSS are measured per run; the two uploads are reported net of the idle DAG's median (time and CPU),
so the table compares the uploads, not Airflow's start-up. The task's own process also times its
``execute`` (wall time and its CPU, all threads, from getrusage, between ``on_execute_callback`` and
``on_success_callback``): the "in-task" columns, which no start-up noise reaches (on a busy machine the idle
DAG's time varies by more than an upload takes). The metadata DB is SQLite under a throw-away
AIRFLOW_HOME; the S3 server is moto in its own process on 127.0.0.1 (as in bench_upload.py), OpenStack
Swift's s3api with ``--store swift`` (bench_upload.py's SwiftStore: tests/support/swift_server.py), or
``--endpoint``.

    python benchmarks/bench_dag.py --size 1GiB --rounds 3
    python benchmarks/bench_dag.py --store swift --size 1GiB --rounds 3
    python benchmarks/bench_dag.py --size 256MiB --rounds 1      # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_upload import (
    GiB,
    LocalServer,
    MiB,
    SwiftStore,
    add_store_arguments,
    child_env,
    ensure_file,
    format_size,
    machine,
    parse_size,
)

CONTENDERS = ("mpu", "local_to_s3", "idle")

DAG_FILE = '''
"""DAGs for benchmarks/bench_dag.py: settings from the environment."""
import os
from datetime import datetime

from airflow.sdk import DAG
from airflow.providers.amazon.aws.transfers.local_to_s3 import LocalFilesystemToS3Operator
from airflow.providers.standard.operators.python import PythonOperator

from airflow_mpu_provider.operators.multipart_upload import MultipartUploadOperator

FILE = os.environ.get("BENCH_FILE", "/nonexistent")
BUCKET = os.environ.get("BENCH_BUCKET", "mpu-bench")
KEY = os.environ.get("BENCH_KEY", "bench/object")
START = datetime(2026, 1, 1)
_STARTED = {}


def _usage():
    import resource
    import time

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime


def _started(context):
    _STARTED["usage"] = _usage()


def _finished(context):
    import json

    (t0, cpu0), (t1, cpu1) = _STARTED["usage"], _usage()
    with open(os.environ["BENCH_TASK_FILE"], "w") as f:
        json.dump({"task_s": t1 - t0, "task_cpu_s": cpu1 - cpu0}, f)


TIMED = {"on_execute_callback": _started, "on_success_callback": _finished}

with DAG("bench_mpu", schedule=None, start_date=START, catchup=False):
    MultipartUploadOperator(
        task_id="upload",
        file=FILE,
        key=KEY,
        bucket=BUCKET,
        replace=True,
        **TIMED,
        **({"checksum_type": os.environ["BENCH_CHECKSUM_TYPE"]} if os.environ.get("BENCH_CHECKSUM_TYPE") else {}),
    )

with DAG("bench_local_to_s3", schedule=None, start_date=START, catchup=False):
    LocalFilesystemToS3Operator(
        task_id="upload", filename=FILE, dest_key=KEY, dest_bucket=BUCKET, replace=True, **TIMED
    )

with DAG("bench_idle", schedule=None, start_date=START, catchup=False):
    PythonOperator(task_id="upload", python_callable=lambda: None, **TIMED)
'''


def airflow_env(
    home: Path, endpoint: str, file: Path, bucket: str, key: str, checksum_type: str | None = None
) -> dict[str, str]:
    env = {k: v for k, v in child_env().items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
                {
                    "conn_type": "aws",
                    "login": env["AWS_ACCESS_KEY_ID"],
                    "password": env["AWS_SECRET_ACCESS_KEY"],
                    "extra": {"endpoint_url": endpoint, "region_name": env["AWS_DEFAULT_REGION"], "verify": False},
                }
            ),
            "BENCH_FILE": str(file),
            "BENCH_BUCKET": bucket,
            "BENCH_KEY": key,
            "BENCH_CHECKSUM_TYPE": checksum_type or "",
        }
    )
    return env


def airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def run_dag(
    home: Path, endpoint: str, file: Path, bucket: str, contender: str, log: Path, checksum_type: str | None = None
) -> dict[str, Any]:
    """One ``airflow dags test`` in a fresh process; its own rusage (and its descendants') from wait4."""
    key = f"bench-dag/{contender}/{uuid.uuid4().hex}"
    env = airflow_env(home, endpoint, file, bucket, key, checksum_type)
    task_file = home / "task.json"
    task_file.unlink(missing_ok=True)
    env["BENCH_TASK_FILE"] = str(task_file)
    with log.open("a") as sink:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [airflow_bin(), "dags", "test", f"bench_{contender}"], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        return {"contender": contender, "error": f"dags test exited {proc.returncode}; see {log}"}
    task = json.loads(task_file.read_text())
    return {
        "contender": contender,
        "key": key,
        "seconds": round(seconds, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "task_s": round(task["task_s"], 3),
        "task_cpu_s": round(task["task_cpu_s"], 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def check_and_delete(endpoint: str, bucket: str, record: dict[str, Any], size: int) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}), verify=False)
    head = client.head_object(Bucket=bucket, Key=record["key"])
    if head["ContentLength"] != size:
        record["error"] = f"object has {head['ContentLength']} bytes, the file {size}"
    client.delete_object(Bucket=bucket, Key=record["key"])


def table(results: list[dict[str, Any]], size: int) -> str:
    ok = [r for r in results if "error" not in r]
    gib = size / GiB

    def med(contender: str, field: str) -> float | None:
        values = [r[field] for r in ok if r["contender"] == contender]
        return statistics.median(values) if values else None

    def ratio(value: float | None, base: float | None) -> str:
        return f"{value / base:.2f}x" if value is not None and base else "-"

    def num(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    idle_s, idle_cpu = med("idle", "seconds") or 0.0, med("idle", "cpu_s") or 0.0
    rows: dict[str, dict[str, Any]] = {}
    for contender in ("mpu", "local_to_s3"):
        values = {field: med(contender, field) for field in ("seconds", "cpu_s", "task_s", "task_cpu_s", "peak_rss_mb")}
        if any(v is None for v in values.values()):
            continue
        net_s = values["seconds"] - idle_s  # type: ignore[operator]
        rows[contender] = {
            **values,
            # None when the idle DAG's median outlasts the upload's: start-up noise larger than the upload.
            "net_mib_s": size / MiB / net_s if net_s > 0 else None,
            "net_cpu_gib": max(values["cpu_s"] - idle_cpu, 0.0) / gib,  # type: ignore[operator]
            "task_mib_s": size / MiB / max(values["task_s"], 1e-6),  # type: ignore[type-var]
            "task_cpu_gib": values["task_cpu_s"] / gib,  # type: ignore[operator]
        }
    base = rows.get("local_to_s3", {})
    head = (
        f"{'contender':<12} {'net MiB/s':>10} {'net CPU s/GiB':>14} {'in-task MiB/s':>14} {'in-task CPU s/GiB':>18} "
        f"{'peak RSS MB':>12} {'vs L2S3: net MiB/s':>19} {'net CPU':>8} {'in-task MiB/s':>14} {'in-task CPU':>12} "
        f"{'raw s':>7} {'raw CPU s':>10}"
    )
    lines = [head, "-" * len(head)]
    for contender, row in rows.items():
        lines.append(
            f"{contender:<12} {num(row['net_mib_s'], 1):>10} {row['net_cpu_gib']:>14.2f} {row['task_mib_s']:>14.1f} "
            f"{row['task_cpu_gib']:>18.2f} {row['peak_rss_mb']:>12.0f} "
            f"{ratio(row['net_mib_s'], base.get('net_mib_s')):>19} "
            f"{ratio(row['net_cpu_gib'], base.get('net_cpu_gib')):>8} "
            f"{ratio(row['task_mib_s'], base.get('task_mib_s')):>14} "
            f"{ratio(row['task_cpu_gib'], base.get('task_cpu_gib')):>12} {row['seconds']:>7.1f} {row['cpu_s']:>10.1f}"
        )
    lines.append(f"{'idle':<12} (median {idle_s:.1f} s, {idle_cpu:.1f} s CPU: subtracted from the net columns above)")
    lines.append("in-task: execute() alone, timed by the task's own process (its CPU: every thread, getrusage)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=GiB, help="file size (default 1GiB)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--endpoint", help="an existing S3 endpoint instead of moto in its own process")
    p.add_argument("--https", action="store_true", help="moto over HTTPS with a self-signed certificate")
    add_store_arguments(p)
    p.add_argument("--bucket", default="mpu-bench")
    p.add_argument("--tmpdir", default=os.path.join(tempfile.gettempdir(), "mpu-bench"))
    p.add_argument(
        "--checksum-type",
        choices=("FULL_OBJECT", "COMPOSITE"),
        help="the operator's checksum_type (default: the operator's default, FULL_OBJECT)",
    )
    p.add_argument("--json", help="save raw results to this file")
    p.add_argument("--keep-log", help="copy the task logs of every run (airflow dags test output) to this file")
    args = p.parse_args(argv)
    if args.store == "swift" and args.https:
        p.error("--store swift serves plain HTTP only")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine().items()))
    file = ensure_file(Path(args.tmpdir), args.size)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mpu-bench-dag-") as scratch:
        home = Path(scratch) / "airflow"
        (home / "dags").mkdir(parents=True)
        (home / "dags" / "bench_dags.py").write_text(DAG_FILE)
        log = Path(scratch) / "dags-test.log"
        server: LocalServer | SwiftStore | None = None
        if args.endpoint:
            endpoint, where = args.endpoint, "existing"
        elif args.store == "swift":  # sets tempauth's credentials in os.environ, which child_env copies
            server = SwiftStore(Path(scratch) / "swift", args.swift_workers).__enter__()
            endpoint, where = server.endpoint, f"OpenStack Swift s3api, workers={args.swift_workers}"
        else:
            server = LocalServer(args.https, Path(scratch) / "moto.log").__enter__()
            endpoint, where = server.endpoint, "moto, own process"
        try:
            import boto3
            from botocore.config import Config

            os.environ.update({k: v for k, v in child_env().items() if k.startswith("AWS_")})
            client = boto3.client(
                "s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}), verify=False
            )
            try:
                client.head_bucket(Bucket=args.bucket)
            except Exception:
                client.create_bucket(Bucket=args.bucket)
            env = airflow_env(home, endpoint, file, args.bucket, "unused")
            subprocess.run([airflow_bin(), "db", "migrate"], env=env, check=True, capture_output=True)
            print(f"endpoint: {endpoint} ({where}), file: {file} ({format_size(args.size)}), AIRFLOW_HOME: {home}")
            for round_no in range(1, args.rounds + 1):
                for contender in CONTENDERS:
                    record = run_dag(home, endpoint, file, args.bucket, contender, log, args.checksum_type)
                    if "error" not in record and contender != "idle":
                        check_and_delete(endpoint, args.bucket, record, args.size)
                    record["round"] = round_no
                    results.append(record)
                    print(f"  round {round_no} {contender}: {record.get('error') or record}", file=sys.stderr)
        finally:
            if server is not None:
                server.__exit__()
            if args.keep_log and log.exists():
                shutil.copyfile(log, args.keep_log)
    print(
        f"\nsize {format_size(args.size)}, {args.rounds} rounds, medians, net of the idle DAG"
        f"{f'; operator checksum_type {args.checksum_type}' if args.checksum_type else ''}"
    )
    print(table(results, args.size))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
