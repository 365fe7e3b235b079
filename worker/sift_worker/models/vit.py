"""`vit_tiny`: ViT-Ti/16 with timm's `vit_tiny_patch16_224` parameter names.

Output is the final-LayerNorm class token (192-d); timm's `head.*` is ignored on load. Mean/std
are (0.5, 0.5, 0.5), not ImageNet's: that is what timm's ViT checkpoints (augreg) were trained
with, and feeding them ImageNet-normalized pixels would quietly degrade the embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .base import EmbeddingModel, init_linear_trunc_normal, init_patch_conv


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.proj(x)  # (N, C, H', W')
        # permute+reshape is free for channels_last input (already NHWC in memory).
        return out.permute(0, 2, 3, 1).reshape(out.shape[0], -1, out.shape[1])


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = x.shape
        qkv: torch.Tensor = self.qkv(x)
        qkv = qkv.reshape(n, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, tokens, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        result: torch.Tensor = self.proj(out.transpose(1, 2).reshape(n, tokens, dim))
        return result


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(self.act(self.fc1(x)))
        return out


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class VisionTransformer(EmbeddingModel):
    """Pre-norm ViT with a class token and learned absolute position embeddings."""

    ignored_prefixes = ("head.",)
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.Sequential(*(Block(dim, num_heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"{self.name} needs {self.img_size}x{self.img_size} input "
                f"(position embeddings are fixed), got {tuple(x.shape[-2:])}"
            )
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat((cls, tokens), dim=1) + self.pos_embed
        tokens = self.norm(self.blocks(tokens))
        out: torch.Tensor = tokens[:, 0]
        return out

    def reset_parameters(self, generator: torch.Generator) -> None:
        # timm's default ("") init scheme.
        init_patch_conv(self.patch_embed.proj, generator)
        nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-0.04, b=0.04, generator=generator)
        nn.init.normal_(self.cls_token, std=1e-6, generator=generator)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                init_linear_trunc_normal(module, generator)
            elif isinstance(module, nn.LayerNorm):
                with torch.no_grad():
                    module.weight.fill_(1.0)
                    module.bias.zero_()


class ViTTiny(VisionTransformer):
    name = "vit_tiny"
    input_size = 224
    embedding_dim = 192

    def __init__(self) -> None:
        super().__init__(img_size=224, patch_size=16, dim=192, depth=12, num_heads=3)
