"""Videos and object crops from object storage vs a local folder, and download memory.

1. **Throughput.** The same run (``tiny`` model, diversity selection) on a local folder
   (volume in and out) and on S3 (a moto server in a child process; input through
   in-process signed GETs, artifacts through signed PUTs), interleaved rounds, median:

   * ``videos``: N mpeg4 clips (320x240), every 5th frame a sample; each clip is copied
     to a temporary file in ranged GETs, decoded, deleted;
   * ``objects``: M photo-like JPEGs (640x480) with 4 detections each (predictions in
     ``.sift/predictions/``); each image is fetched once for its 4 crops; the side
     files are staged first (one GET each).

   Prints samples/s for both and the ratio S3 / folder.
2. **Download memory.** The Python heap peak (tracemalloc) while one large object is
   downloaded to a file in ranged GETs (``RemoteInput.download``): it follows the chunk
   size (8 MiB), not the object size.

moto serves every request from Python on the same cores as the pipeline, so on a small
machine the S3 figure includes moto's own CPU time (see bench_storage.py).

    python benchmarks/bench_remote_media.py [--videos 8] [--frames 150] [--objects 200]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as sift-worker does, before torch loads

import argparse
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_storage import make_jpegs, moto_child, serve_moto_child

BUCKET_IN, BUCKET_OUT = "media-in", "media-out"

BIG_OBJECT = "big.bin"


def make_videos(root: Path, n: int, frames: int) -> None:
    import av

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        with av.open(str(root / f"clip{i:03d}.mp4"), "w") as out:
            stream = out.add_stream("mpeg4", rate=25)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            base = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
            for f in range(frames):
                arr = np.roll(base, f * 3, axis=1)
                for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)


def make_objects(root: Path, m: int) -> None:
    make_jpegs(root, m)
    preds = root / ".sift" / "predictions"
    preds.mkdir(parents=True)
    (preds / "schema.json").write_text(json.dumps({"task": "detection", "classes": ["a", "b"]}))
    for path in root.glob("*.jpg"):
        boxes = [[20 + 100 * k, 40 + 60 * k, 160, 120] for k in range(4)]
        objects = [{"box": b, "class": k % 2, "score": 0.8} for k, b in enumerate(boxes)]
        (preds / f"{path.stem}.json").write_text(json.dumps({"objects": objects}))


def serve_moto(root: Path, big_mb: int) -> None:
    """The media under their folder names and one big object (download memory)."""

    def seed(backend: Any) -> None:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            backend.put_object(BUCKET_IN, path.relative_to(root).as_posix(), path.read_bytes())
        backend.put_object(BUCKET_IN, BIG_OBJECT, os.urandom(big_mb * 2**20))

    serve_moto_child((BUCKET_IN, BUCKET_OUT), seed)


def run_once(
    kind: str, inp: dict[str, Any], out: dict[str, Any], threads: int
) -> tuple[float, int]:
    from sift_worker.config import parse_manifest
    from sift_worker.progress import Progress
    from sift_worker.run import RunSettings, run_selection

    spec_input: dict[str, Any] = {"type": kind, "embeddings": {"model": "tiny"}}
    if kind == "videos":
        spec_input["frames"] = {"everyNFrames": 5}
    else:
        spec_input["predictions"] = {"task": "detection"}
    out = dict(out)
    if "s3" in out:  # a fresh prefix per round: a checkpoint must not be resumed
        out["s3"] = {**out["s3"], "prefix": f"run/{time.monotonic_ns()}/"}
    doc = {
        "apiVersion": "sift.dev/v1alpha1",
        "kind": "SelectionRun",
        "metadata": {"name": "bench"},
        "spec": {
            "datasource": {"input": inp, "output": out},
            "input": spec_input,
            "selection": {
                "nSamples": 50,
                "strategies": [
                    {"input": {"type": "embeddings"}, "strategy": {"type": "diversity"}}
                ],
            },
        },
    }
    start = time.perf_counter()
    summary = run_selection(
        parse_manifest(doc, "bench"),
        RunSettings(threads=threads, decode_workers=threads),
        Progress(bars=False),
    )
    seconds = time.perf_counter() - start
    stages = ", ".join(f"{k} {v:.1f}" for k, v in summary.timings.items())
    where = next(iter(inp))
    print(f"    {kind} from {where}: {seconds:.1f} s, {summary.embedded} samples ({stages})")
    return seconds, summary.embedded


def download_peak(endpoint: str) -> tuple[float, int]:
    from sift_worker.dataplane import RemoteInput
    from sift_worker.fetch import Fetcher
    from sift_worker.storage import RunSigner
    from sift_worker.storage.s3 import S3Storage

    signer = RunSigner(S3Storage(BUCKET_IN, "", endpoint=endpoint))
    with Fetcher(signer.allowed_hosts()) as fetch, tempfile.TemporaryDirectory() as tmp:
        remote = RemoteInput(signer, fetch, Path(tmp))
        tracemalloc.start()
        size = remote.download(BIG_OBJECT, Path(tmp) / "big")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 2**20, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--frames", type=int, default=150, help="frames per clip")
    ap.add_argument("--objects", type=int, default=200, help="images (4 objects each)")
    ap.add_argument("--big-mb", type=int, default=256, help="object size for download memory")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kinds", default="videos,objects")
    ap.add_argument("--serve-moto", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_moto:
        serve_moto(Path(args.serve_moto[0]), int(args.serve_moto[1]))
        return
    with tempfile.TemporaryDirectory(prefix="sift-bench-media-") as tmp:
        data = Path(tmp) / "data"
        make_videos(data / "videos", args.videos, args.frames)
        make_objects(data / "objects", args.objects)
        with moto_child(__file__, str(data), str(args.big_mb)) as (_, endpoint):
            s3_out = {"s3": {"bucket": BUCKET_OUT, "endpoint": endpoint}}
            for kind in args.kinds.split(","):
                vol_in = {"volume": {"path": str(data / kind)}}
                s3_in = {"s3": {"bucket": BUCKET_IN, "prefix": f"{kind}/", "endpoint": endpoint}}
                vol_out = {"volume": {"path": str(Path(tmp) / f"out-{kind}")}}
                rates: dict[str, list[float]] = {"volume": [], "s3": []}
                for _ in range(args.rounds):
                    for where, inp, out in (("volume", vol_in, vol_out), ("s3", s3_in, s3_out)):
                        seconds, n = run_once(kind, inp, out, args.threads)
                        rates[where].append(n / seconds)
                vol, s3 = statistics.median(rates["volume"]), statistics.median(rates["s3"])
                print(
                    f"{kind}: folder {vol:.0f} samples/s, S3 {s3:.0f} samples/s, "
                    f"ratio {s3 / vol:.2f} (median of {args.rounds})"
                )
            peak, size = download_peak(endpoint)
            print(f"download of {size / 2**20:.0f} MiB to a file: Python heap peak {peak:.1f} MiB")


if __name__ == "__main__":
    main()
