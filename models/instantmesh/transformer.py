"""Triplane transformer: learned triplane tokens cross-attend to the image tokens, then upsample."""

from __future__ import annotations

import torch
from torch import nn

from models.instantmesh.config import LRMConfig


class TriplaneBlock(nn.Module):
    """Cross-attention to the image tokens, self-attention, MLP; each pre-norm with a residual."""

    def __init__(self, width: int, context_width: int, heads: int) -> None:
        super().__init__()
        # LayerNorm's default eps (1e-5) is what the checkpoint was trained with.
        self.norm1 = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(
            width, heads, bias=False, kdim=context_width, vdim=context_width, batch_first=True
        )
        self.norm2 = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, bias=False, batch_first=True)
        self.norm3 = nn.LayerNorm(width)
        # Identity at index 2 keeps the checkpoint's numbering (mlp.0, mlp.3): a dropout sat there.
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Identity(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.cross_attn(h, context, context, need_weights=False)[0]
        h = self.norm2(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm3(x))


class TriplaneTransformer(nn.Module):
    """Image tokens [B, T, D] -> triplanes [B, 3, C, 2L, 2L] (planes xy, xz, zy)."""

    def __init__(self, config: LRMConfig) -> None:
        super().__init__()
        width = config.transformer_dim
        self.low_res = config.triplane_low_res
        self.pos_embed = nn.Parameter(torch.randn(1, 3 * self.low_res**2, width) * width**-0.5)
        self.layers = nn.ModuleList(
            TriplaneBlock(width, config.vit.hidden_size, config.transformer_heads)
            for _ in range(config.transformer_layers)
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.deconv = nn.ConvTranspose2d(width, config.triplane_dim, kernel_size=2, stride=2)

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        batch = image_tokens.shape[0]
        x = self.pos_embed.expand(batch, -1, -1)
        for layer in self.layers:
            x = layer(x, image_tokens)
        x = self.norm(x)
        side = self.low_res
        # Tokens are (plane, row, column); each plane becomes a [width, L, L] feature map.
        x = x.view(batch, 3, side, side, -1).permute(0, 1, 4, 2, 3).reshape(batch * 3, -1, side, side)
        planes = self.deconv(x)
        return planes.view(batch, 3, *planes.shape[-3:])
