"""On a GPU machine: k-center on CUDA picks exactly what it picks on the CPU.

Not a test (CI has no GPU, and a forever-skipped test proves nothing); run it where
a GPU is lent:  python benchmarks/check_cuda.py
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from sift_worker.selection import k_center_greedy


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device here", file=sys.stderr)
        return 2
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(200, 128)).astype(np.float32)
    x = centres[rng.integers(0, 200, 200_000)] + 0.4 * rng.normal(size=(200_000, 128)).astype(
        np.float32
    )
    start = time.perf_counter()
    cpu = k_center_greedy(x, 500, device="cpu")
    mid = time.perf_counter()
    gpu = k_center_greedy(x, 500, device="cuda")
    end = time.perf_counter()
    same = cpu.indices.tolist() == gpu.indices.tolist()
    print(f"cpu {mid - start:.2f} s, cuda {end - mid:.2f} s, same picks: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
