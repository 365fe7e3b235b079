"""What the samples of a run are: image files, frames of video files, or detected objects.

A pure-ish planning step before decoding: it lists files and, for objects, reads the
detection predictions that define the crops, so the decode stream gets exact refs.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path

from sift_worker.api.v1alpha1 import InputSpec
from sift_worker.imaging import IMAGE_EXTENSIONS
from sift_worker.inputs import InputProblem
from sift_worker.inputs.predictions import Predictions, load_predictions
from sift_worker.sources.objects import object_refs
from sift_worker.sources.samples import SampleRef
from sift_worker.sources.video import VIDEO_EXTENSIONS
from sift_worker.sources.volume import iter_volume_files


@dataclass
class SamplePlan:
    files: list[str]  # every listed file, sorted
    samples: list[
        str | SampleRef
    ]  # what the decoder gets: names (images, videos) or refs (objects)
    predictions: Predictions | None = None  # loaded for `files` when the input has predictions
    problems: list[InputProblem] = field(default_factory=list)


def input_extensions(spec: InputSpec) -> frozenset[str]:
    """The file extensions a run lists: videos, or images (for images and objects)."""
    return VIDEO_EXTENSIONS if spec.type == "videos" else IMAGE_EXTENSIONS


def plan_samples(input_dir: Path, spec: InputSpec, relevant: Container[str] | None) -> SamplePlan:
    files = list(iter_volume_files(input_dir, extensions=input_extensions(spec), relevant=relevant))
    return plan_files(input_dir, files, spec)


def plan_files(side_dir: Path, files: list[str], spec: InputSpec) -> SamplePlan:
    """The plan for listed ``files``; side files (predictions) are read from ``side_dir``:
    the input folder, or the staging copy of an object-storage input's side files."""
    plan = SamplePlan(files=files, samples=list(files))
    if spec.predictions is not None:
        plan.predictions, plan.problems = load_predictions(
            side_dir, files, spec.predictions.prefix, spec.predictions.task
        )
    if spec.type == "objects":
        assert plan.predictions is not None  # the model's rules require detection predictions
        min_size = spec.objects.min_size if spec.objects else 4.0
        refs: list[str | SampleRef] = []
        for i, file in enumerate(files):
            boxes = plan.predictions.boxes[plan.predictions.object_rows(i)]
            refs.extend(object_refs(file, [tuple(b) for b in boxes.tolist()], min_size=min_size))
        plan.samples = refs
    return plan
