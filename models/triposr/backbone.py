"""Triplane tokens, the 1D transformer that lets them cross-attend to the image, and the upsampler.

Token order everywhere is plane-major, then row, then column: token ``n * P * P + r * P + c``
is texel (r, c) of plane n. Parameter names follow the checkpoint (``tokenizer.embeddings``,
``backbone.*`` in the diffusers ``Transformer1D`` layout, ``post_processor.upsample``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.triposr.config import TripoSRConfig


class TriplaneTokenizer(nn.Module):
    """The learned triplane, one set for every image: [3, C, P, P] <-> tokens [B, C, 3 * P * P]."""

    def __init__(self, config: TripoSRConfig) -> None:
        super().__init__()
        self.plane_size = config.plane_size
        self.embeddings = nn.Parameter(
            torch.randn(3, config.token_channels, config.plane_size, config.plane_size) / config.token_channels**0.5
        )

    def forward(self, batch: int) -> torch.Tensor:
        planes, channels = self.embeddings.shape[:2]
        tokens = self.embeddings.permute(1, 0, 2, 3).reshape(1, channels, -1)
        return tokens.expand(batch, -1, -1)

    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, C, 3 * P * P] -> planes [B, 3, C, P, P]."""
        batch, channels, count = tokens.shape
        side = self.plane_size
        if count != 3 * side * side:
            raise ValueError(f"{count} tokens do not form three {side}x{side} planes")
        return tokens.reshape(batch, channels, 3, side, side).permute(0, 2, 1, 3, 4)


class MultiHeadAttention(nn.Module):
    """Softmax attention over contiguous heads, 1/sqrt(head_dim) scaling; ``context`` defaults to self."""

    def __init__(
        self, width: int, heads: int, head_dim: int, *, context_width: int | None = None, bias: bool = False
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(width, inner, bias=bias)
        self.to_k = nn.Linear(context_width or width, inner, bias=bias)
        self.to_v = nn.Linear(context_width or width, inner, bias=bias)
        # A ModuleList so the projection keeps its checkpoint name ``to_out.0`` (a dropout sat at index 1).
        self.to_out = nn.ModuleList([nn.Linear(inner, width)])

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(context)), self._split(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class GatedGELU(nn.Module):
    """GEGLU: one projection to value and gate halves, value * GELU(gate) (exact erf GELU)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, 2 * hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, width: int, mult: int = 4) -> None:
        super().__init__()
        # Identity at index 1 keeps the checkpoint's numbering (net.0.proj, net.2): a dropout sat there.
        self.net = nn.Sequential(GatedGELU(width, mult * width), nn.Identity(), nn.Linear(mult * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the image tokens, GEGLU feed-forward; each with a residual."""

    def __init__(self, config: TripoSRConfig) -> None:
        super().__init__()
        width = config.inner_dim
        self.norm1 = nn.LayerNorm(width)
        self.attn1 = MultiHeadAttention(width, config.heads, config.head_dim, bias=config.attention_bias)
        self.norm2 = nn.LayerNorm(width)
        self.attn2 = MultiHeadAttention(
            width, config.heads, config.head_dim, context_width=config.cross_attention_dim, bias=config.attention_bias
        )
        self.norm3 = nn.LayerNorm(width)
        self.ff = FeedForward(width)

    def forward(self, x: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), image_tokens)
        return x + self.ff(self.norm3(x))


class TriplaneTransformer(nn.Module):
    """tokens [B, C, N] (channels-first) and image tokens [B, T, D] -> tokens [B, C, N], with an outer residual."""

    def __init__(self, config: TripoSRConfig) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(config.norm_num_groups, config.token_channels, eps=1e-6)
        self.proj_in = nn.Linear(config.token_channels, config.inner_dim)
        self.transformer_blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.layers))
        self.proj_out = nn.Linear(config.inner_dim, config.token_channels)

    def forward(self, tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(self.norm(tokens).transpose(1, 2))
        for block in self.transformer_blocks:
            x = block(x, image_tokens)
        return self.proj_out(x).transpose(1, 2) + tokens


class TriplaneUpsampler(nn.Module):
    """planes [B, 3, C, P, P] -> scene codes [B, 3, C_out, 2P, 2P]: one 2x2 stride-2 transposed conv shared by the planes."""

    def __init__(self, config: TripoSRConfig) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(config.token_channels, config.triplane_channels, kernel_size=2, stride=2)

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        batch, count = planes.shape[:2]
        upsampled = self.upsample(planes.reshape(batch * count, *planes.shape[2:]))
        return upsampled.view(batch, count, *upsampled.shape[1:])
