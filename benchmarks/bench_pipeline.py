"""Local pipeline throughput vs the model alone, measured in the same run.

The reference is the model on pre-decoded uint8 tensors (no I/O, no decode):
the ceiling the streaming pipeline (list -> decode in threads -> batch -> model)
can reach. Prints images/s for both and their ratio; the target is >= 0.80.

    python benchmarks/bench_pipeline.py [--images 512] [--models tiny,resnet18]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sift_worker.demo_data import generate_demo_dataset
from sift_worker.embed import embed_folder
from sift_worker.imaging import decode_for_model
from sift_worker.models import build_model, embed_batch
from sift_worker.sources import iter_volume_files


class _Null:
    def advance(self, n: int = 1) -> None:
        pass


def dataset(root: Path, images: int) -> list[str]:
    if not root.exists():
        per = max(1, images // 8)
        generate_demo_dataset(
            root, clusters=8, per_cluster=per, duplicates=0, corrupt=0, size=(1024, 768)
        )
    return list(iter_volume_files(root))[:images]


def model_only(model: torch.nn.Module, tensors: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(tensors), batch):
        embed_batch(model, tensors[i : i + batch])  # type: ignore[arg-type]
    return len(tensors) / (time.perf_counter() - start)


def pipeline(
    root: Path, names: list[str], model: torch.nn.Module, batch: int, workers: int
) -> float:
    start = time.perf_counter()
    out = embed_folder(root, names, model, batch_size=batch, decode_workers=workers, stage=_Null())  # type: ignore[arg-type]
    assert len(out.filenames) == len(names), out.corrupt
    return len(names) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--models", default="tiny,resnet18")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--decode-workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(".bench/images-1024x768"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = dataset(args.data, args.images)
    print(
        f"{len(names)} images of 1024x768 in {args.data}; torch threads {args.threads}, "
        f"decode workers {args.decode_workers}, batch {args.batch}, median of {args.repeats}"
    )
    print(f"{'model':10} {'px':>4} {'model-only img/s':>17} {'pipeline img/s':>15} {'ratio':>6}")
    for name in args.models.split(","):
        model = build_model(name)
        size = model.input_size
        count = len(names) if name == "tiny" else min(len(names), 192)
        subset = names[:count]
        tensors = torch.from_numpy(
            np.stack([decode_for_model(args.data / n, size) for n in subset])
        )
        model_only(model, tensors[: args.batch], args.batch)  # warm-up
        ref, pipe = [], []
        for _ in range(args.repeats):  # interleave so machine noise hits both alike
            ref.append(model_only(model, tensors, args.batch))
            pipe.append(pipeline(args.data, subset, model, args.batch, args.decode_workers))
        r, p = statistics.median(ref), statistics.median(pipe)
        print(f"{name:10} {size:>4} {r:>17.1f} {p:>15.1f} {p / r:>6.2f}")


if __name__ == "__main__":
    main()
