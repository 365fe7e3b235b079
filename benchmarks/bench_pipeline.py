"""Local pipeline throughput vs the model alone, measured in the same run.

References, all measured here on the same images:
- model-only: the model on pre-decoded uint8 tensors (no I/O, no decode);
- decode-only: decoding alone with the same number of decode threads;
- cpu-bound: 1 / (1/model + 1/decode), the best any pipeline can do when model
  and decode share the same cores.
The pipeline (list -> decode in threads -> batch -> model) is reported as a ratio
of model-only (target >= 0.80 where the model dominates the cost) and of cpu-bound
(how much of the reachable throughput the overlap achieves).

    python benchmarks/bench_pipeline.py [--images 512] [--models tiny,resnet18]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as sift-worker does, before torch loads

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sift_worker.demo_data import generate_demo_dataset
from sift_worker.embed import embed_folder
from sift_worker.imaging import decode_for_model
from sift_worker.models import EmbeddingModel, build_model, embed_batch
from sift_worker.sources import iter_volume_files


class _Null:
    def advance(self, n: int = 1) -> None:
        pass


def jpeg_dataset(root: Path, images: int) -> list[str]:
    """Photo-sized JPEGs (quality 90), like camera data; made once and cached."""
    if not root.exists():
        source = root.with_name(root.name + "-src")
        per = max(1, -(-images // 8))
        demo = generate_demo_dataset(
            source, clusters=8, per_cluster=per, duplicates=0, corrupt=0, size=(1024, 768)
        )
        root.mkdir(parents=True)
        names = sorted(n for group in demo.clusters.values() for n in group)
        for i, name in enumerate(names):
            with Image.open(source / name) as im:
                im.convert("RGB").save(root / f"img_{i:05d}.jpg", quality=90)
    return list(iter_volume_files(root))[:images]


def model_only(model: EmbeddingModel, tensors: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(tensors), batch):
        embed_batch(model, tensors[i : i + batch])
    return len(tensors) / (time.perf_counter() - start)


def decode_only(root: Path, names: list[str], size: int, workers: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(lambda n: decode_for_model(root / n, size), names):
            pass
    return len(names) / (time.perf_counter() - start)


def pipeline(
    root: Path, names: list[str], model: EmbeddingModel, batch: int, workers: int
) -> float:
    start = time.perf_counter()
    out = embed_folder(root, names, model, batch_size=batch, decode_workers=workers, stage=_Null())
    assert len(out.filenames) == len(names), out.corrupt
    return len(names) / (time.perf_counter() - start)


def main() -> None:
    cpus = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--models", default="tiny,resnet18")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=cpus)
    parser.add_argument("--decode-workers", type=int, default=cpus)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(".bench/jpeg-1024x768"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = jpeg_dataset(args.data, args.images)
    print(
        f"{len(names)} JPEGs of 1024x768 in {args.data}; torch threads {args.threads}, "
        f"decode workers {args.decode_workers}, batch {args.batch}, median of {args.repeats}"
    )
    header = ("model", "px", "images", "model-only", "decode-only", "cpu-bound", "pipeline")
    print(
        "{:9} {:>4} {:>6} {:>11} {:>12} {:>10} {:>9}  {}".format(*header, "pipe/model pipe/bound")
    )
    for name in args.models.split(","):
        model = build_model(name)
        size = model.input_size
        subset = names if name == "tiny" else names[:192]
        tensors = torch.from_numpy(
            np.stack([decode_for_model(args.data / n, size) for n in subset])
        )
        model_only(model, tensors[: args.batch], args.batch)  # warm-up
        ref, dec, pipe = [], [], []
        for _ in range(args.repeats):  # interleaved, so machine noise hits all alike
            ref.append(model_only(model, tensors, args.batch))
            dec.append(decode_only(args.data, subset, size, args.decode_workers))
            pipe.append(pipeline(args.data, subset, model, args.batch, args.decode_workers))
        r, d, p = (statistics.median(x) for x in (ref, dec, pipe))
        bound = 1 / (1 / r + 1 / d)
        print(
            f"{name:9} {size:>4} {len(subset):>6} {r:>11.1f} {d:>12.1f} {bound:>10.1f} "
            f"{p:>9.1f}  {p / r:>10.2f} {p / bound:>10.2f}"
        )
    print("figures in images/s")


if __name__ == "__main__":
    main()
