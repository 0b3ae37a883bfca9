"""The Hugging Face ViT layout (DINO ViT-B/16), shared by the InstantMesh and TripoSR image encoders.

Module and parameter names follow ``transformers``' ViTModel (``embeddings.*``,
``encoder.layer.N.*``, ``layernorm``, ``pooler.dense``), so checkpoints that embed that
model load strictly. Behaviour is that of transformers 4.35 with
``interpolate_pos_encoding=True``, the version both references pin: the position table
is resized by a scale factor, not to a target size (see ``Embeddings.positions_for``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ViTConfig:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    patch_size: int
    image_size: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-12

    @property
    def table_side(self) -> int:
        """Side of the square position-embedding table (without the CLS row)."""
        return self.image_size // self.patch_size

    @classmethod
    def from_hf_dict(cls, raw: Mapping[str, Any]) -> "ViTConfig":
        """A Hugging Face ``config.json`` of a ViTModel (only the exact-GELU, qkv-bias variant exists here)."""
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"only the exact-GELU ViT is implemented, got {raw['hidden_act']!r}")
        if not raw.get("qkv_bias", True):
            raise ValueError("only the ViT with query/key/value biases is implemented")
        return cls(
            hidden_size=int(raw["hidden_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=int(raw["num_attention_heads"]),
            intermediate_size=int(raw["intermediate_size"]),
            patch_size=int(raw["patch_size"]),
            image_size=int(raw["image_size"]),
            num_channels=int(raw.get("num_channels", 3)),
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
        )


class PatchEmbeddings(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.projection(pixels).flatten(2).transpose(1, 2)


class Embeddings(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.table_side**2 + 1, config.hidden_size))
        self.patch_embeddings = PatchEmbeddings(config)

    def positions_for(self, num_patches: int, height: int, width: int) -> torch.Tensor:
        table = self.position_embeddings
        table_patches = table.shape[1] - 1
        if num_patches == table_patches and height == width:
            return table
        side = round(table_patches**0.5)
        grid = table[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        # The reference resizes by scale factor (with a +0.1 guard), not to a target size;
        # the two differ in the source-coordinate mapping and hence in every value.
        scale = ((height // self.patch_size + 0.1) / side, (width // self.patch_size + 0.1) / side)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False)
        if grid.shape[-2:] != (height // self.patch_size, width // self.patch_size):
            raise ValueError(f"position table resize gave {tuple(grid.shape[-2:])} for a {height}x{width} image")
        patches = grid.permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1])
        return torch.cat([table[:, :1], patches], dim=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embeddings(pixels)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1)
        return tokens + self.positions_for(tokens.shape[1] - 1, pixels.shape[-2], pixels.shape[-1])


class SelfAttention(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).flatten(2)


class DenseOutput(nn.Module):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class Attention(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(config)
        self.output = DenseOutput(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.attention(x))


class ViTLayer(nn.Module):
    """Pre-norm block: x + attention(LN(x)), then x + MLP(LN(x)) with exact GELU."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        width = config.hidden_size
        self.attention = Attention(config)
        self.intermediate = DenseOutput(width, config.intermediate_size)
        self.output = DenseOutput(config.intermediate_size, width)
        self.layernorm_before = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(width, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output(F.gelu(self.intermediate(self.layernorm_after(x))))


class ViTEncoder(nn.Module):
    def __init__(self, config: ViTConfig, layer: Callable[[ViTConfig], nn.Module] = ViTLayer) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layer(config) for _ in range(config.num_hidden_layers))


class Pooler(nn.Module):
    """Carried only so checkpoints that include it load strictly; its output is never used."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)


class ViTModel(nn.Module):
    """Pixels [N, C, H, W] (already normalised) -> last hidden state [N, 1 + patches, hidden], CLS first.

    Any H, W divisible by the patch size: the position table is interpolated as the reference does.
    ``layer`` builds each block (a ``ViTLayer`` variant); ``conditioning`` is handed to every block.
    """

    def __init__(
        self, config: ViTConfig, *, with_pooler: bool = True, layer: Callable[[ViTConfig], nn.Module] = ViTLayer
    ) -> None:
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = ViTEncoder(config, layer)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if with_pooler:
            self.pooler = Pooler(config)

    def forward(self, pixels: torch.Tensor, *conditioning: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixels)
        for block in self.encoder.layer:
            x = block(x, *conditioning)
        return self.layernorm(x)
