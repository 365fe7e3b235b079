"""Turning a batch of decoded images into embeddings."""

from __future__ import annotations

import torch

from .base import EmbeddingModel


def embed_batch(model: EmbeddingModel, batch: torch.Tensor) -> torch.Tensor:
    """Embed uint8 images (N,3,S,S) with `model`; returns float32 (N,D) on CPU.

    uint8 crosses to the model's device before conversion (4x less transfer). Conversion,
    normalization and the switch to channels_last (2x faster convs on CPU/oneDNN, also preferred
    on GPU) happen in a single pass with one allocation. The result is an ordinary tensor, not
    an inference tensor, so callers may modify it in place.
    """
    if batch.dtype != torch.uint8:
        raise TypeError(f"embed_batch expects uint8 images, got {batch.dtype}")
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"embed_batch expects a (N, 3, S, S) batch, got {tuple(batch.shape)}")
    if batch.shape[0] == 0:
        return torch.empty((0, model.embedding_dim), dtype=torch.float32)
    device = next(model.parameters()).device
    with torch.inference_mode():
        x = batch.to(device, non_blocking=batch.is_pinned()) if batch.device != device else batch
        std = torch.tensor(model.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        mean = torch.tensor(model.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one fused pass: uint8 NCHW in, float32 channels_last out.
        normalized = torch.empty(
            x.shape, dtype=torch.float32, device=device, memory_format=torch.channels_last
        )
        torch.addcmul(-mean / std, x, 1.0 / (255.0 * std), out=normalized)
        features: torch.Tensor = model(normalized)
    # Outside inference mode: yields an ordinary tensor; the copy is only N*D floats.
    if features.device.type != "cpu":
        return features.to("cpu", dtype=torch.float32)
    return features.to(dtype=torch.float32, copy=True)
