"""The contract every built-in architecture meets, plus shared initialisation helpers."""

from __future__ import annotations

import math
from typing import Self

import torch
from torch import nn

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class EmbeddingModel(nn.Module):
    """A feature extractor: normalized float images (N,3,S,S) in, pooled float32 (N,D) out.

    Subclasses set the class attributes below; the pipeline reads them to resize and normalize
    images, so they are the only thing it needs to know about an architecture.
    """

    name: str
    input_size: int
    embedding_dim: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Checkpoint keys with these prefixes (classifier heads) are dropped silently on load.
    ignored_prefixes: tuple[str, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Initialise every parameter and buffer from `generator` alone.

        Models are built on the meta device and materialised uninitialised, so this must write
        every tensor; using an explicit generator keeps the global RNG untouched.
        """
        raise NotImplementedError

    def train(self, mode: bool = True) -> Self:
        """Switch modes, but keep BatchNorm statistics frozen: this is a feature extractor."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self


def init_cnn(model: nn.Module, generator: torch.Generator) -> None:
    """He (fan-out) init for convolutions, identity for BatchNorm: torchvision's ResNet recipe."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            init_conv_fan_out(module, generator)
        elif isinstance(module, nn.BatchNorm2d):
            init_batchnorm(module)


def init_batchnorm(bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Identity BatchNorm: with eval-mode statistics mean 0 / var 1 it passes values through."""
    with torch.no_grad():
        if bn.weight is not None:
            bn.weight.fill_(1.0)
        if bn.bias is not None:
            bn.bias.zero_()
        if bn.running_mean is not None:
            bn.running_mean.zero_()
        if bn.running_var is not None:
            bn.running_var.fill_(1.0)
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.zero_()


def init_conv_fan_out(conv: nn.Conv2d, generator: torch.Generator) -> None:
    """He init (fan_out), as torchvision does, so random-init features keep a sane scale."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu", generator=generator)
    if conv.bias is not None:
        with torch.no_grad():
            conv.bias.zero_()


def init_linear_trunc_normal(
    layer: nn.Linear | nn.Conv2d, generator: torch.Generator, std: float = 0.02
) -> None:
    """timm's ViT init: truncated normal weights, zero bias."""
    nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std, generator=generator)
    if layer.bias is not None:
        with torch.no_grad():
            layer.bias.zero_()


def init_patch_conv(conv: nn.Conv2d, generator: torch.Generator) -> None:
    """PyTorch's default conv init (timm leaves the patch projection at the default)."""
    nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5), generator=generator)
    if conv.bias is not None:
        fan_in = conv.weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(conv.bias, -bound, bound, generator=generator)
