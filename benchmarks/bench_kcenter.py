"""k-center greedy: numpy reference, memory-bandwidth bound and every precision, one run.

For each data set (a clustered Gaussian mixture, where pruning has structure to
use, and pure noise, where it has none) this prints, per mode:
- seconds (median of --repeats) and the ratio to the numpy reference (which
  recomputes |u - c| for every row each step) and to the float32 bandwidth bound
  k * (time of one full read of X). The read is timed *during* the mode's own run:
  every --probe-every steps the run pauses for a plain read of X (torch sum, the
  mode's thread count and 2 threads, the faster), timed apart from the steps and
  left out of the mode's seconds; the bound uses the median probe. This shared
  machine's bandwidth drifts by 2x within minutes, so a read measured before or
  after a mode misstates it; "/best" divides by the bound at the fastest read seen
  in the whole run instead (the optimistic figure);
- the covering radius (max over rows of the distance to the nearest pick,
  recomputed here) and its ratio to float32's;
- whether the picks equal the reference's (the reference runs --ref-steps steps,
  timed per step and extrapolated to k; its picks are compared on that prefix);
- peak RSS growth during the call over bytes(X), sampled every millisecond.
Modes run interleaved across --repeats (medians), as other processes may load the
machine. Default run: about three minutes at N = 1M on 2 cores; --n 200000 for a
quick check.

    python benchmarks/bench_kcenter.py [--n 1000000] [--d 128] [--k 1000] [--repeats 1]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as sift-worker does, before torch loads

import argparse
import contextlib
import ctypes
import math
import statistics
import threading
import time
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from sift_worker.selection import kcenter
from sift_worker.selection.kcenter import KCenterResult, Precision, k_center_greedy


def clustered(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    """Gaussian mixture on the sphere: uneven cluster sizes and spreads.

    Clusters are about 0.2-0.6 across (chord distance) and their centres about
    1.4 apart, so once every cluster holds a pick the new centre's cluster is the
    only one it can affect: the case pruning is for.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = rng.dirichlet(np.full(clusters, 2.0))
    labels = rng.choice(clusters, size=n, p=sizes)
    spread = (rng.uniform(0.5, 1.5, clusters) * 0.2 / np.sqrt(d)).astype(np.float32)
    x = np.empty((n, d), np.float32)
    step = 1 << 16
    for i in range(0, n, step):
        lab = labels[i : i + step]
        noise = rng.standard_normal((len(lab), d), dtype=np.float32)
        x[i : i + step] = centres[lab] + noise * spread[lab, None]
    return x


def noise(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def trim() -> None:
    """Hand freed heap memory back to the OS, so a later call's growth is not hidden."""
    with contextlib.suppress(OSError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakRss:
    """Peak resident-set growth while the block runs (sampled; sees torch and numpy)."""

    def __enter__(self) -> PeakRss:
        trim()
        self.base = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def growth(self) -> int:
        return self.peak - self.base


def bandwidth(x: np.ndarray, repeats: int = 7) -> tuple[float, str]:
    """Fastest full read of x (bytes/s): median over repeats, best over methods and threads."""
    t = torch.from_numpy(x)
    best, how = 0.0, ""
    old = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, read in (("sum", t.sum), ("amax", t.amax)):
            read()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                read()
                times.append(time.perf_counter() - start)
            bw = x.nbytes / statistics.median(times)
            if bw > best:
                best, how = bw, f"torch {name}, {threads} thread(s)"
    torch.set_num_threads(old)
    return best, how


class InRunReads:
    """Plain reads of X between k-center steps, timed apart from the steps.

    Patches the greedy state's per-step method for the duration of one call: every
    ``every`` steps it reads X once with torch ``sum`` (the run's thread count and 2
    threads, the faster), so the bound is measured under the same load as the steps
    around it. The time spent probing is recorded so the caller can leave it out.
    """

    def __init__(self, x: np.ndarray, every: int) -> None:
        self.t = torch.from_numpy(x)
        self.every = every
        self.reads: list[float] = []
        self.paused = 0.0
        self.steps = 0

    def __enter__(self) -> InRunReads:
        greedy = kcenter._Greedy
        self.original = greedy._add_centre
        probe = self

        def add_centre(state: kcenter._Greedy, pos: int) -> None:
            probe.original(state, pos)
            probe.steps += 1
            if probe.steps % probe.every == 0:
                probe.read()

        greedy._add_centre = add_centre  # type: ignore[method-assign,assignment]
        return self

    def read(self) -> None:
        begin = time.perf_counter()
        old = torch.get_num_threads()
        best = math.inf
        for threads in sorted({old, 2}):
            torch.set_num_threads(threads)
            start = time.perf_counter()
            self.t.sum()
            best = min(best, time.perf_counter() - start)
        torch.set_num_threads(old)
        self.reads.append(best)
        self.paused += time.perf_counter() - begin

    def __exit__(self, *exc: object) -> None:
        kcenter._Greedy._add_centre = self.original  # type: ignore[method-assign]


def reference(x: np.ndarray, k: int, steps: int) -> tuple[np.ndarray, float]:
    """Plain numpy k-center: picks for min(k, steps) steps and extrapolated seconds for k."""
    start = time.perf_counter()
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    mean = u.mean(axis=0, dtype=np.float64)
    mean /= np.linalg.norm(mean)
    first = int(np.argmax(u @ mean.astype(np.float32)))
    mind = np.linalg.norm(u - u[first], axis=1)
    picks = [first]
    setup = time.perf_counter() - start
    start = time.perf_counter()
    while len(picks) < min(k, steps):
        best = int(np.argmax(mind))
        if mind[best] <= 0:
            break
        picks.append(best)
        np.minimum(mind, np.linalg.norm(u - u[best], axis=1), out=mind)
    per_step = (time.perf_counter() - start) / max(1, len(picks) - 1)
    return np.asarray(picks), setup + per_step * (k - 1)


def covering_radius(x: np.ndarray, picks: np.ndarray) -> float:
    """max_i min_j |u_i - u_j|, recomputed independently of the implementation."""
    t = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    c = t[torch.from_numpy(picks)]
    worst, step = 0.0, 1 << 16
    for i in range(0, len(t), step):
        sims = (t[i : i + step] @ c.T).amax(dim=1)
        worst = max(worst, float(torch.sqrt(torch.clamp(2 - 2 * sims.min(), min=0))))
    return worst


@dataclass
class Row:
    name: str
    seconds: float
    indices: np.ndarray
    peak: int = 0
    stop: str = ""
    bound: float = 0.0  # the float32 bound measured around this mode


def run(name: str, x: np.ndarray, modes: list[str], args: argparse.Namespace) -> None:
    gb = x.nbytes / 1e9
    print(f"\n== {name}: N={len(x):,} d={x.shape[1]} k={args.k}, X = {gb:.2f} GB float32")
    bw, how = bandwidth(x)
    ref_picks, ref_s = reference(x, args.k, args.ref_steps)
    prefix = len(ref_picks)
    note = "full" if prefix >= args.k else f"{prefix} steps, extrapolated"
    print(f"numpy reference {ref_s:.1f} s ({note})")

    # modes interleaved across repeats, so load from other processes hits all alike
    times: dict[str, list[float]] = {m: [] for m in modes}
    bounds: dict[str, list[float]] = {m: [] for m in modes}
    peaks: dict[str, int] = dict.fromkeys(modes, 0)
    results: dict[str, KCenterResult] = {}
    seen = [bw]
    for _ in range(args.repeats):
        for spec in modes:
            mode, _, th = spec.partition("@")
            threads = int(th) if th else args.threads
            with PeakRss() as mem, InRunReads(x, args.probe_every) as probe:
                start = time.perf_counter()
                results[spec] = k_center_greedy(
                    x, args.k, precision=cast(Precision, mode), threads=threads
                )
                times[spec].append(time.perf_counter() - start - probe.paused)
            peaks[spec] = max(peaks[spec], mem.growth)
            if probe.reads:
                seen.extend(x.nbytes / r for r in probe.reads)
                bounds[spec].append(args.k * statistics.median(probe.reads))
            else:  # stopped before the first probe: the read after the run
                after, how = bandwidth(x)
                seen.append(after)
                bounds[spec].append(args.k * x.nbytes / after)
    lo, hi = min(seen), max(seen)
    print(f"read bandwidth {lo / 1e9:.1f}-{hi / 1e9:.1f} GB/s over the run (e.g. {how})")
    print(f"float32 bound = k x bytes(X) / bandwidth: {args.k * x.nbytes / hi:.2f} s at the best")
    bound = args.k * x.nbytes / hi

    rows = [Row("numpy reference", ref_s, ref_picks)]
    for spec in modes:
        mode, _, th = spec.partition("@")
        res = results[spec]
        label = f"{mode} t={th or args.threads}"
        secs = statistics.median(times[spec])
        bound_s = statistics.median(bounds[spec])
        rows.append(Row(label, secs, res.indices, peaks[spec], res.stop_reason, bound_s))
    radii = {r.indices.tobytes(): covering_radius(x, r.indices) for r in rows[1:]}
    f32 = next((r for r in rows if r.name.startswith("float32")), rows[1])
    f32_radius = radii[f32.indices.tobytes()]
    header = f"{'mode':<16}{'seconds':>9}{'x ref':>8}{'/bound':>8}{'/best':>8}{'radius':>9}"
    header += f"{'/f32':>8}"
    print(header + f"{'same picks':>12}{'peak mem':>10}  stop")
    for r in rows:
        radius = radii.get(r.indices.tobytes(), float("nan"))
        same = np.array_equal(r.indices[:prefix], ref_picks)
        peak = f"{r.peak / x.nbytes:.2f}x" if r is not rows[0] else "-"
        print(
            f"{r.name:<16}{r.seconds:>9.2f}{ref_s / r.seconds:>7.1f}x"
            f"{r.seconds / (r.bound or bound):>8.2f}{r.seconds / bound:>8.2f}"
            f"{radius:>9.4f}{radius / f32_radius:>8.3f}{same!s:>12}{peak:>10}  {r.stop}"
        )
    by_name = {r.name: r for r in rows}
    for mode in ("float32", "int8"):
        one, two = by_name.get(f"{mode} t=1"), by_name.get(f"{mode} t=2")
        if one and two:
            print(f"{mode} two threads / one thread: {two.seconds / one.seconds:.2f}")
    print(f"picks compared with the reference on its first {prefix} steps")


def paired_scans(x: np.ndarray, rounds: int = 30) -> None:
    """One k-center step's scan against a plain read of the same matrix, alternated.

    Alternating step by step puts both under the same load at the same moment, so
    this ratio holds still where the machine's bandwidth does not.
    """
    from sift_worker.selection import native

    if native.kernels is None:
        print("scan kernels not built: skipping the paired measurement")
        return
    kernels = native.kernels
    n, d = x.shape
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    read = torch.from_numpy(unit)
    maxsim = np.full(n, -np.inf, np.float32)
    ld = -(-d // 64) * 64
    store = np.zeros((n, ld), np.int8)
    store[:, :d] = np.clip(np.round(unit * 127 / np.abs(unit).max()), -127, 127)
    scale = np.full(n, 0x3C00, np.int16)  # bfloat16 bits of 1/128
    q16 = np.zeros(ld, np.int16)
    lowbar = np.full(n, np.inf, np.float32)
    pos = np.empty(n, np.int64)
    threads = torch.get_num_threads()

    def i8(a: int, b: int) -> int:
        return int(kernels.i8_scan(store, ld, q16, 1e-4, scale, lowbar, None, pos[a:], a, b))

    f32 = i8s = reads = 0.0
    for i in range(rounds):
        start = time.perf_counter()
        native.update_max_dot(unit, unit[i], maxsim, threads)
        f32 += time.perf_counter() - start
        q16[:d] = np.round(unit[i] * 30000)
        start = time.perf_counter()
        native.split(0, n, i8, threads)
        i8s += time.perf_counter() - start
        start = time.perf_counter()
        read.sum()
        reads += time.perf_counter() - start
    print(
        f"scan kernels vs a plain read of X, alternated {rounds}x ({threads} threads): "
        f"float32 step {f32 / reads:.2f}x the read, int8 step {i8s / reads:.2f}x the read "
        f"(read {reads / rounds * 1e3:.1f} ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--clusters", type=int, default=300)
    parser.add_argument("--ref-steps", type=int, default=20, help="numpy reference steps to run")
    parser.add_argument("--threads", type=int, default=2, help="when a mode names none")
    parser.add_argument(
        "--probe-every", type=int, default=50, help="steps between in-run reads of X (the bound)"
    )
    parser.add_argument(
        "--data", default="clustered,noise", help='"" runs only the paired scan measurement'
    )
    parser.add_argument(
        "--modes",
        default="float32@1,float32@2,bfloat16,float16,int8@1,int8@2",
        help="precision[@threads], comma separated (clustered data)",
    )
    parser.add_argument(
        "--noise-modes",
        default="float32@1,float32@2,int8@1,int8@2",
        help="the same for the noise data (bfloat16/float16 add a minute there)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paired_scans(noise(args.n, args.d, seed=2))
    for name in filter(None, args.data.split(",")):
        if name == "clustered":
            x = clustered(args.n, args.d, args.clusters, seed=0)
            run(name, x, args.modes.split(","), args)
        elif name == "noise":
            x = noise(args.n, args.d, seed=1)
            run(name, x, args.noise_modes.split(","), args)
        else:
            parser.error(f"--data: unknown data set {name!r} (clustered, noise)")
        del x


if __name__ == "__main__":
    main()
