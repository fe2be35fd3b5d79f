"""Peak part bytes in memory of a long stream whose parts grow, scaled down to minutes.

    python benchmarks/stream_memory.py --parts-per-size 10 --max-buffer-mib 64 --sizes 6

streams 5, 10, 20, ... MiB parts (``--sizes`` of them, ``--parts-per-size`` each) to moto's S3 server
in its own process, so that this process's memory is the client's alone, and prints the peak part
bytes three ways: as the engine reports it (``peak_buffer_bytes``), as measured from outside the
engine (from the start of a part's read until upload_part returned for it), and tracemalloc's peak of
everything this process allocated, per part size being read. The bound is ``max_buffer_bytes`` while
parts fit in it, and one part for parts larger than it. Run by hand (a few GiB go through moto).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.multipart.test_stream import MeasuredStream, scaled_engine
from tests.support.local_airflow import moto_server_process, s3_client

MiB = 1024 * 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts-per-size", type=int, default=10)
    p.add_argument("--max-buffer-mib", type=int, default=64)
    p.add_argument("--sizes", type=int, default=6, help="part sizes: 5 MiB doubled this many times minus one")
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args()
    max_buffer = args.max_buffer_mib * MiB
    sizes = [5 * MiB << n for n in range(args.sizes)]
    with moto_server_process() as endpoint:
        s3 = s3_client(endpoint)
        s3.create_bucket(Bucket="stream-memory")
        total = sum(args.parts_per_size * size for size in sizes) - 12345  # the last part is short
        stream = MeasuredStream(total, trace=True)
        stream.wrap(s3)
        engine = scaled_engine(
            s3,
            stream,
            key="long",
            max_buffer=max_buffer,
            parts_per_size=args.parts_per_size,
            concurrency=args.concurrency,
        )
        engine.bucket = "stream-memory"
        stream.start_tracing()
        started = time.monotonic()
        result = engine.run()
        print(
            f"{total / MiB:.0f} MiB in {result.parts} parts ({args.parts_per_size} per size: "
            f"{', '.join(str(s // MiB) for s in sizes)} MiB), max_buffer_bytes {args.max_buffer_mib} MiB, "
            f"concurrency {args.concurrency}, {time.monotonic() - started:.0f} s"
        )
        print(
            f"peak part bytes: engine-reported {result.peak_buffer_bytes / MiB:.1f} MiB, "
            f"measured {stream.peak / MiB:.1f} MiB"
        )
        for size in sizes:
            bound = max(max_buffer, size)
            print(
                f"  reading {size // MiB:>5} MiB parts: measured {stream.peak_while_reading[size] / MiB:7.1f} MiB, "
                f"tracemalloc {stream.traced_peak[size] / MiB:7.1f} MiB (bound {bound / MiB:.0f} MiB), "
                f"most in flight {stream.most_in_flight.get(size)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
