"""HTTP/2 or HTTP/1.1 for the worker's fetches: objects/s and client CPU per object.

fake-gcs-server (Go, which speaks HTTP/2 over TLS) serves N objects of 55 kB; the same
httpx client fetches them with 8 threads over a 16-connection HTTP/1.1 pool and over
HTTP/2, interleaved rounds. The server runs on CPU 1 and this process on CPU 0 (as a
remote store would not share the worker's cores). S3 and Azure Blob answer HTTP/1.1
only, so this is the one backend where the choice exists.

Needs the ``h2`` package, which Sift does not depend on: ``pip install h2`` first.

    python benchmarks/bench_http2.py [--n 400] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from bench_storage import make_gcs_buckets, put_gcs_objects, start_fake_gcs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    try:
        import h2  # noqa: F401
    except ImportError:
        print("needs the h2 package: pip install h2", file=sys.stderr)
        return 2
    server, endpoint = start_fake_gcs("https")
    try:
        # a throwaway self-signed server on loopback: nothing to verify against
        with httpx.Client(verify=False, base_url=endpoint, timeout=30) as admin:
            make_gcs_buckets(admin, ["bench"])
            body = os.urandom(55_000)
            put_gcs_objects(admin, "bench", ((f"o{i}", body) for i in range(args.n)))
        if len(os.sched_getaffinity(0)) >= 2:
            os.sched_setaffinity(server.pid, {1})
            os.sched_setaffinity(0, {0})
        rates: dict[bool, list[float]] = {False: [], True: []}
        cpu: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for http2 in (False, True):
                limits = httpx.Limits(max_connections=16)
                with httpx.Client(verify=False, http2=http2, limits=limits) as http:
                    http.get(f"{endpoint}/storage/v1/b/bench/o/o0?alt=media")
                    c0, t0 = time.process_time(), time.perf_counter()
                    with ThreadPoolExecutor(8) as pool:
                        list(
                            pool.map(
                                lambda i: (
                                    http.get(
                                        f"{endpoint}/storage/v1/b/bench/o/o{i}?alt=media"
                                    ).content
                                ),
                                range(args.n),
                            )
                        )
                    rates[http2].append(args.n / (time.perf_counter() - t0))
                    cpu[http2].append((time.process_time() - c0) * 1000 / args.n)
        h1, h2r = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"{args.n} objects of 55 kB, 8 threads, median of {args.rounds} rounds:")
        print(f"  HTTP/1.1 pool   {h1:7.1f} objects/s  {statistics.median(cpu[False]):.2f} ms CPU")
        print(f"  HTTP/2          {h2r:7.1f} objects/s  {statistics.median(cpu[True]):.2f} ms CPU")
        print(f"  ratio HTTP/2 / HTTP/1.1: {h2r / h1:.2f}")
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
