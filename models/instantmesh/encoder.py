"""DINO ViT-B/16 image encoder with per-view camera modulation (adaLN, no gate).

Module and parameter names follow the checkpoint (``encoder.model.*`` is a Hugging
Face ViTModel layout, ``encoder.camera_embedder.*`` the camera MLP) so the real
weights load strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.instantmesh.config import LRMConfig, ViTConfig


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
        out = F.scaled_dot_product_attention(self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x)))
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


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class ModulatedViTLayer(nn.Module):
    """A pre-norm ViT layer whose two LayerNorm outputs are shifted and scaled by the camera."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        width = config.hidden_size
        self.attention = Attention(config)
        self.intermediate = DenseOutput(width, config.intermediate_size)
        self.output = DenseOutput(config.intermediate_size, width)
        self.layernorm_before = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 4 * width))

    def forward(self, x: torch.Tensor, camera_embedding: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, shift_mlp, scale_mlp = self.adaLN_modulation(camera_embedding).chunk(4, dim=-1)
        x = x + self.attention(modulate(self.layernorm_before(x), shift_msa, scale_msa))
        hidden = F.gelu(self.intermediate(modulate(self.layernorm_after(x), shift_mlp, scale_mlp)))
        return x + self.output(hidden)


class LayerStack(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(ModulatedViTLayer(config) for _ in range(config.num_hidden_layers))


class ViTBackbone(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = LayerStack(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixels: torch.Tensor, camera_embedding: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixels)
        for layer in self.encoder.layer:
            x = layer(x, camera_embedding)
        return self.layernorm(x)


class CameraModulatedEncoder(nn.Module):
    """Views [N, 3, H, W] in [0, 1] and cameras [N, 16] -> tokens [N, 1 + patches, hidden] (CLS first)."""

    def __init__(self, config: LRMConfig) -> None:
        super().__init__()
        width = config.vit.hidden_size
        self.model = ViTBackbone(config.vit)
        self.camera_embedder = nn.Sequential(nn.Linear(config.camera_dim, width), nn.SiLU(), nn.Linear(width, width))
        # Plain attributes, not buffers: the checkpoint carries no normalisation state.
        self.image_mean = tuple(config.image_mean)
        self.image_std = tuple(config.image_std)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """DINO's processor step with rescale and resize off: (x - mean) / std per channel."""
        mean = images.new_tensor(self.image_mean).view(1, -1, 1, 1)
        std = images.new_tensor(self.image_std).view(1, -1, 1, 1)
        return (images - mean) / std

    def forward(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(images), self.camera_embedder(cameras))
