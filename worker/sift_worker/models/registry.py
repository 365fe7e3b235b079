"""Name -> architecture lookup and reproducible construction."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import torch

from .base import EmbeddingModel
from .resnet import ResNet18, ResNet50
from .tiny import TinyCNN
from .vit import ViTTiny
from .weights import load_weights

_FACTORIES: dict[str, Callable[[], EmbeddingModel]] = {
    "tiny": TinyCNN,
    "resnet18": ResNet18,
    "resnet50": ResNet50,
    "vit_tiny": ViTTiny,
}
ARCHITECTURES: tuple[str, ...] = tuple(_FACTORIES)


def build_model(name: str, *, weights: pathlib.Path | None = None, seed: int = 0) -> EmbeddingModel:
    """Build architecture `name` in eval mode on CPU, from `weights` or else seeded random init.

    Modules are created on the meta device and initialised from a private generator, so the same
    seed gives bit-identical models and the caller's global RNG stream is left untouched.
    Raises ValueError for an unknown name and WeightsError for an unusable weights file.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(
            f"unknown architecture {name!r}; choose one of: {', '.join(ARCHITECTURES)}"
        )
    with torch.device("meta"):
        model = factory()
    model.to_empty(device="cpu")
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    model.reset_parameters(generator)
    if weights is not None:
        load_weights(model, pathlib.Path(weights))
    model.eval()
    return model
