"""The worker's fetch client against httpx: client CPU per object and objects/s.

fake-gcs-server (Go: fast, so the client's cost shows) serves N objects of 55 kB over
plain HTTP on CPU 1; this process, on CPU 0, fetches them all

* with a plain ``httpx.Client`` (the reference: what the worker's Fetcher used before),
  streaming each body as the Fetcher did, and
* with :class:`sift_worker.fetch.Fetcher` (``http.client`` connections, egress guard,
  retries, refresh checks),

sequentially and from 8 threads, interleaved rounds. Prints both and the ratios.

    python benchmarks/bench_fetch.py [--n 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
from bench_storage import make_gcs_buckets, put_gcs_objects, start_fake_gcs
from sift_worker.fetch import Fetcher
from sift_worker.storage import SignedURL


def measure(fetch: Callable[[int], bytes], n: int, threads: int) -> tuple[float, float]:
    """(objects/s, client CPU ms per object) for fetching objects 0..n-1."""
    fetch(0)
    c0, t0 = time.process_time(), time.perf_counter()
    if threads == 1:
        sizes = [len(fetch(i)) for i in range(n)]
    else:
        with ThreadPoolExecutor(threads) as pool:
            sizes = [len(b) for b in pool.map(fetch, range(n))]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert all(s == 55_000 for s in sizes), "a short body"
    return n / wall, 1000 * cpu / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    server, endpoint = start_fake_gcs()
    try:
        with httpx.Client(base_url=endpoint, timeout=30) as admin:
            make_gcs_buckets(admin, ["bench"])
            body = os.urandom(55_000)
            put_gcs_objects(admin, "bench", ((f"o{i}", body) for i in range(args.n)))
        pinned = len(os.sched_getaffinity(0)) >= 2
        if pinned:
            os.sched_setaffinity(server.pid, {1})
            os.sched_setaffinity(0, {0})
        expires = datetime.now(UTC) + timedelta(hours=1)
        urls = [
            SignedURL("GET", f"{endpoint}/storage/v1/b/bench/o/o{i}?alt=media", f"o{i}", expires)
            for i in range(args.n)
        ]
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        with (
            httpx.Client(limits=limits, timeout=30) as http,
            Fetcher({"127.0.0.1"}, concurrency=16) as fetcher,
        ):

            def via_httpx(i: int) -> bytes:
                with http.stream("GET", urls[i].url) as resp:
                    resp.raise_for_status()
                    out = bytearray()
                    for chunk in resp.iter_bytes():
                        out += chunk
                    return bytes(out)

            def via_fetcher(i: int) -> bytes:
                return fetcher.get_bytes(urls[i])

            for _ in range(args.rounds):
                for threads in (1, 8):
                    for label, fn in (("httpx", via_httpx), ("Fetcher", via_fetcher)):
                        results.setdefault((label, threads), []).append(
                            measure(fn, args.n, threads)
                        )
        where = "server on CPU 1, client on CPU 0" if pinned else "shared CPUs"
        print(f"{args.n} objects of 55 kB, median of {args.rounds} rounds ({where}):")
        for threads in (1, 8):
            rate = {k: statistics.median(r for r, _ in v) for k, v in results.items()}
            cpu = {k: statistics.median(c for _, c in v) for k, v in results.items()}
            ref, new = ("httpx", threads), ("Fetcher", threads)
            print(f"  {threads} thread{'s' if threads > 1 else ''}:")
            print(f"    httpx (reference)  {rate[ref]:7.1f} objects/s  {cpu[ref]:.2f} ms CPU")
            print(f"    Fetcher            {rate[new]:7.1f} objects/s  {cpu[new]:.2f} ms CPU")
            print(
                f"    Fetcher / httpx: {rate[new] / rate[ref]:.2f}x the objects/s, "
                f"{cpu[new] / cpu[ref]:.2f}x the CPU per object"
            )
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
