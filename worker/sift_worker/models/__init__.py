"""Built-in embedding architectures (plain torch, no torchvision/timm needed at runtime).

| name     | input | dim  | notes                                                  |
|----------|-------|------|--------------------------------------------------------|
| tiny     | 64    | 128  | small CNN for demos/tests; random init is usually fine |
| resnet18 | 224   | 512  | torchvision parameter names                            |
| resnet50 | 224   | 2048 | torchvision parameter names                            |
| vit_tiny | 224   | 192  | timm `vit_tiny_patch16_224` names; mean/std 0.5        |
"""

from .base import EmbeddingModel
from .embed import embed_batch
from .registry import ARCHITECTURES, build_model
from .weights import WeightsError, load_weights

__all__ = [
    "ARCHITECTURES",
    "EmbeddingModel",
    "WeightsError",
    "build_model",
    "embed_batch",
    "load_weights",
]
