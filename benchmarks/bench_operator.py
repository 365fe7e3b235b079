"""Operator speed against the KMock emulator: N SelectionRuns created at once.

Measures, for a real ``sift-operator run`` process:

* time from the first run's creation until every run's Job exists,
* p50/p99 create-to-Job latency per run (both timestamps taken by the emulator),
* the operator's RSS (``/proc/<pid>/status``), before and after,
* API requests per run (counted by the emulator: creates, status patches, events, ...),

and with ``--churn-minutes M`` whether RSS stays flat over M minutes of create/delete
churn (batches of runs created, their Jobs awaited, then deleted).

    .venv/bin/python benchmarks/bench_operator.py                 # 500 runs
    .venv/bin/python benchmarks/bench_operator.py --runs 100 --churn-minutes 10
    .venv/bin/python benchmarks/bench_operator.py --reference  # + the emulator alone

``--reference`` first sends the operator's writes for the same number of runs from a
plain client (no kopf, no watches): the emulator's own cost per request and the
create-to-Job latency without the operator, printed as a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "operator"))

from harness.cluster import selection_run  # noqa: E402
from harness.operator import OperatorProcess  # noqa: E402
from harness.server import EmulatorServer, Kube  # noqa: E402

NS = "bench"
srv_pid: list[int] = [0]  # the operator's pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def emulator_cpu(srv: EmulatorServer) -> float:
    """CPU time of the emulator's thread (it runs in this process)."""

    async def probe() -> float:
        return time.thread_time()

    return srv.call(probe)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _create_all(url: str, runs: list[dict[str, Any]], concurrency: int = 64) -> None:
    sem = asyncio.Semaphore(concurrency)
    path = f"/apis/sift.dev/v1alpha1/namespaces/{NS}/selectionruns"
    async with aiohttp.ClientSession(url) as session:

        async def one(run: dict[str, Any]) -> None:
            async with sem, session.post(path, json=run) as resp:
                if resp.status >= 300:
                    raise RuntimeError(f"create failed: {resp.status} {await resp.text()}")

        await asyncio.gather(*(one(r) for r in runs))


def create_all(url: str, runs: list[dict[str, Any]]) -> None:
    # a client thread of its own, like kubectl from another machine
    error: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(_create_all(url, runs))
        except BaseException as exc:
            error.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if error:
        raise error[0]


def wait_jobs(srv: EmulatorServer, names: list[str], timeout: float) -> None:
    created = srv.emulator.created_at
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(("jobs", NS, f"sift-{n}") in created for n in names):
            return
        time.sleep(0.02)
    missing = [n for n in names if ("jobs", NS, f"sift-{n}") not in created]
    raise SystemExit(f"timed out: {len(missing)} runs without a Job, e.g. {missing[:3]}")


def wait_settled(kube: Kube, names: list[str], timeout: float) -> float:
    """Until every run's status says its Job was created; returns the time it took."""
    start = time.monotonic()
    want = set(names)
    while time.monotonic() - start < timeout:
        done = {
            r["metadata"]["name"]
            for r in kube.list("selectionruns", NS)
            if any(
                c.get("type") == "Running" and c.get("reason") == "JobCreated"
                for c in (r.get("status") or {}).get("conditions", [])
            )
        }
        if want <= done:
            return time.monotonic() - start
        time.sleep(0.1)
    raise SystemExit("timed out waiting for statuses")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def burst(srv: EmulatorServer, kube: Kube, n: int, prefix: str) -> dict[str, Any]:
    names = [f"{prefix}-{i:04d}" for i in range(n)]
    runs = [selection_run(name, NS) for name in names]
    srv.emulator.counts.clear()
    pid = srv_pid[0]
    cpu0, emu0 = cpu_seconds(pid), emulator_cpu(srv)
    t0 = time.monotonic()
    create_all(srv.url, runs)
    t_created = time.monotonic()
    wait_jobs(srv, names, timeout=300)
    created = srv.emulator.created_at
    first = min(created[("selectionruns", NS, n_)] for n_ in names)
    last_job = max(created[("jobs", NS, f"sift-{n_}")] for n_ in names)
    latencies = [
        created[("jobs", NS, f"sift-{n_}")] - created[("selectionruns", NS, n_)] for n_ in names
    ]
    settle = wait_settled(kube, names, timeout=300)
    cpu1, emu1 = cpu_seconds(pid), emulator_cpu(srv)
    counts = Counter(srv.emulator.counts)
    # what the operator did per run: everything but the benchmark's own creates and polls
    own = counts[("POST", "selectionruns")] + counts[("GET", "selectionruns")]
    operator_requests = sum(counts.values()) - own
    by_kind = {
        f"{m} {p}": c
        for (m, p), c in sorted(counts.items())
        if (m, p) not in (("POST", "selectionruns"), ("GET", "selectionruns"))
    }
    return {
        "runs": n,
        "create_seconds": round(t_created - t0, 3),
        "all_jobs_seconds": round(last_job - first, 3),
        "latency_p50_seconds": round(percentile(latencies, 50), 3),
        "latency_p99_seconds": round(percentile(latencies, 99), 3),
        "latency_max_seconds": round(max(latencies), 3),
        "status_settled_after_jobs_seconds": round(settle, 3),
        "operator_cpu_ms_per_run": round((cpu1 - cpu0) * 1000 / n, 1),
        "emulator_cpu_ms_per_run": round((emu1 - emu0) * 1000 / n, 1),
        "api_requests_per_run": round(operator_requests / n, 2),
        "api_requests_by_kind": by_kind,
        "_names": names,
    }


async def _reference_writes(url: str, n: int, prefix: str, concurrency: int = 64) -> None:
    """The operator's writes for n new runs, from a plain client: no kopf, no watch, no
    reconcile. Each run is created, then its children (the operator's own builders), one
    status patch and one Event are written, as the operator does for a new run."""
    from sift_operator.children import desired_children
    from sift_operator.settings import OperatorSettings

    settings = OperatorSettings()
    sem = asyncio.Semaphore(concurrency)
    runs_path = f"/apis/sift.dev/v1alpha1/namespaces/{NS}/selectionruns"
    paths = {
        "ServiceAccount": f"/api/v1/namespaces/{NS}/serviceaccounts",
        "ConfigMap": f"/api/v1/namespaces/{NS}/configmaps",
        "NetworkPolicy": f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies",
        "Job": f"/apis/batch/v1/namespaces/{NS}/jobs",
    }
    async with aiohttp.ClientSession(url) as session:

        async def one(i: int) -> None:
            async with sem:
                name = f"{prefix}-{i:04d}"
                async with session.post(runs_path, json=selection_run(name, NS)) as resp:
                    run = await resp.json()
                children = desired_children(run, settings, api_cidrs=(), suspend=False)
                others = [c for c in children.all() if c["kind"] != "Job"]

                async def post(obj: dict[str, Any]) -> None:
                    async with session.post(paths[obj["kind"]], json=obj) as r:
                        if r.status >= 300:
                            raise RuntimeError(await r.text())

                await asyncio.gather(*(post(c) for c in others))
                await post(children.job)
                status = {"status": {"phase": "Pending", "observedGeneration": 1}}
                async with session.patch(
                    f"{runs_path}/{name}/status",
                    json=status,
                    headers={"Content-Type": "application/merge-patch+json"},
                ):
                    pass
                event = {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"name": f"{name}.ref", "namespace": NS},
                    "involvedObject": {"kind": "SelectionRun", "name": name, "namespace": NS},
                    "reason": "JobCreated",
                    "message": "reference",
                    "type": "Normal",
                }
                async with session.post(f"/api/v1/namespaces/{NS}/events", json=event):
                    pass

        await asyncio.gather(*(one(i) for i in range(n)))


def reference(srv: EmulatorServer, n: int) -> dict[str, Any]:
    """The emulator alone: the same writes as the operator's, from a plain client."""
    srv.emulator.counts.clear()
    emu0 = emulator_cpu(srv)
    t0 = time.monotonic()
    error: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(_reference_writes(srv.url, n, "ref"))
        except BaseException as exc:
            error.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if error:
        raise error[0]
    wall = time.monotonic() - t0
    emu1 = emulator_cpu(srv)
    created = srv.emulator.created_at
    names = [f"ref-{i:04d}" for i in range(n)]
    latencies = [
        created[("jobs", NS, f"sift-{n_}")] - created[("selectionruns", NS, n_)] for n_ in names
    ]
    requests = sum(srv.emulator.counts.values())
    return {
        "reference_runs": n,
        "reference_all_jobs_seconds": round(wall, 3),
        "reference_latency_p50_seconds": round(percentile(latencies, 50), 3),
        "reference_latency_p99_seconds": round(percentile(latencies, 99), 3),
        "reference_emulator_cpu_ms_per_run": round((emu1 - emu0) * 1000 / n, 1),
        "reference_emulator_cpu_ms_per_request": round((emu1 - emu0) * 1000 / max(1, requests), 2),
        "_names": names,
    }


def delete_all(srv: EmulatorServer, kube: Kube, names: list[str]) -> None:
    for name in names:
        kube.delete("selectionruns", NS, name)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and kube.list("jobs", NS):
        time.sleep(0.1)
    left = kube.list("jobs", NS)
    if left:
        raise SystemExit(
            f"{len(left)} Jobs outlived their runs, e.g. {left[0]['metadata']['name']}"
        )
    for key in [k for k in srv.emulator.created_at if k[1] == NS]:
        del srv.emulator.created_at[key]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--churn-minutes", type=float, default=0.0)
    parser.add_argument("--churn-batch", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="first measure the emulator alone: the operator's writes from a plain client",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp_, EmulatorServer() as srv:
        tmp = Path(tmp_)
        srv.emulator.keep_requests = 200
        kube = Kube(srv.url)
        op = OperatorProcess(
            srv.write_kubeconfig(tmp / "kubeconfig.yaml"),
            tmp / "operator.log",
            args=("--resync-seconds", "300"),
            verbose=False,  # measure the operator as deployed
        )
        try:
            ref: dict[str, Any] = {}
            if args.reference:  # before the operator starts: it would act on these runs
                ref = reference(srv, args.runs)
                delete_all(srv, kube, ref.pop("_names"))
            op.start()
            op.wait_for_log("sift operator started", 60)
            assert op.proc is not None
            pid = op.proc.pid
            srv_pid[0] = pid
            # warm up (watch streams established, code paths imported), then start clean
            warm = burst(srv, kube, 5, "warmup")
            delete_all(srv, kube, warm.pop("_names"))
            time.sleep(1.0)
            rss_before = rss_mib(pid)
            result = burst(srv, kube, args.runs, "run")
            names = result.pop("_names")
            if ref:
                result.update(ref)
                result["ratio_p99_operator_to_reference"] = round(
                    result["latency_p99_seconds"] / max(1e-3, ref["reference_latency_p99_seconds"]),
                    1,
                )
            result["operator_rss_mib_before"] = round(rss_before, 1)
            result["operator_rss_mib_after"] = round(rss_mib(pid), 1)
            print(json.dumps(result, indent=2))

            if args.churn_minutes > 0:
                delete_all(srv, kube, names)
                samples: list[float] = []
                end = time.monotonic() + args.churn_minutes * 60
                cycle = 0
                while time.monotonic() < end:
                    batch = burst(srv, kube, args.churn_batch, f"churn{cycle % 1000:03d}")
                    delete_all(srv, kube, batch.pop("_names"))
                    samples.append(rss_mib(pid))
                    cycle += 1
                    if cycle % 10 == 0:
                        print(f"  churn cycle {cycle}: rss {samples[-1]:.1f} MiB", flush=True)
                head = statistics.median(samples[: max(3, len(samples) // 10)])
                tail = statistics.median(samples[-max(3, len(samples) // 10) :])
                churn = {
                    "churn_minutes": args.churn_minutes,
                    "churn_cycles": cycle,
                    "churn_runs_total": cycle * args.churn_batch,
                    "rss_mib_first_cycles": round(head, 1),
                    "rss_mib_last_cycles": round(tail, 1),
                    "rss_mib_max": round(max(samples), 1),
                    "rss_growth_mib": round(tail - head, 1),
                    "orphans_collected_by_gc": srv.emulator.orphans_collected,
                }
                result.update(churn)
                print(json.dumps(churn, indent=2))
            if args.json:
                args.json.write_text(json.dumps(result, indent=2))
        finally:
            op.stop()
            kube.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
