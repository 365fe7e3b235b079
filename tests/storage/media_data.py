"""Small data sets for object-storage media tests: images with detections and
metadata in the default (hidden) side-file prefixes, short videos, and a manifest
that reads all of it (tests/storage/test_remote_media.py, tests/broker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import yaml
from PIL import Image


def make_image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    arr = np.zeros((60, 80, 3), np.uint8)
    arr[:] = rng.integers(0, 256, 3, dtype=np.uint8)
    for _ in range(3):  # a few blocks: crops of different boxes differ
        x, y = int(rng.integers(0, 60)), int(rng.integers(0, 40))
        arr[y : y + 20, x : x + 20] = rng.integers(0, 256, 3, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, "JPEG", quality=90)


def make_objects_dataset(root: Path) -> Path:
    """Images with detections and metadata in the default (hidden) side-file prefixes.

    Covered: a sample without predictions, one with invalid predictions JSON, one
    without metadata, a box partly outside its image.
    """
    preds, meta = root / ".sift" / "predictions", root / ".sift" / "metadata"
    preds.mkdir(parents=True)
    meta.mkdir(parents=True)
    (preds / "schema.json").write_text(
        json.dumps({"task": "detection", "classes": ["car", "person"]})
    )
    for i in range(8):
        name = f"cam{i % 2}/img{i}.jpg"
        make_image(root / name, i)
        side = Path(name).with_suffix(".json")
        objects = [
            {"box": [2 + i, 3, 30, 25], "class": "car", "score": 0.9},
            {"box": [40, 20 + i, 30, 30], "class": i % 2, "score": 0.6},
            {"box": [70, 50, 30, 30], "class": "person", "score": 0.5},  # overshoots
        ]
        if i == 5:
            continue  # no predictions: a missing file, as on a volume
        (preds / side).parent.mkdir(parents=True, exist_ok=True)
        (preds / side).write_text(
            "{not json" if i == 6 else json.dumps({"objects": objects[: 1 + i % 3]})
        )
        if i != 3:
            (meta / side).parent.mkdir(parents=True, exist_ok=True)
            (meta / side).write_text(json.dumps({"weather": ["sunny", "rain"][i % 2], "w": i}))
    return root


def make_videos_dataset(root: Path) -> Path:
    """Three small mpeg4 clips of 12 frames (different shapes) and a broken one."""
    root.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(((64, 48), (48, 64), (64, 64))):
        with av.open(str(root / f"clip{i}.mp4"), "w") as out:
            stream = out.add_stream("mpeg4", rate=10)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.gop_size = 4
            for n in range(12):
                arr = np.zeros((h, w, 3), np.uint8)
                arr[:] = ((n * 20 + i * 70) % 256, (n * 7) % 256, (i * 90) % 256)
                arr[: h // 3, : w // 3] = 255
                for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    return root


def media_manifest(
    tmp_path: Path, name: str, inp: dict[str, Any], out: dict[str, Any], spec_input: dict[str, Any]
) -> Path:
    doc = {
        "apiVersion": "sift.dev/v1alpha1",
        "kind": "SelectionRun",
        "metadata": {"name": name},
        "spec": {
            "datasource": {"input": inp, "output": out},
            "input": {"embeddings": {"model": "tiny", "batchSize": 4}, **spec_input},
            "selection": {
                "nSamples": 6,
                "strategies": [
                    {"input": {"type": "embeddings"}, "strategy": {"type": "diversity"}},
                    {
                        "input": {"type": "scores", "task": "detection", "score": "entropy"},
                        "strategy": {"type": "weights"},
                    },
                    {
                        "input": {"type": "metadata", "key": "weather"},
                        "strategy": {"type": "balance", "distribution": "uniform"},
                    },
                ],
            },
        },
    }
    if spec_input.get("type") == "videos":  # no side files: embeddings only
        doc["spec"]["selection"]["strategies"] = doc["spec"]["selection"]["strategies"][:1]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path
