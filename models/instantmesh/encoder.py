"""DINO ViT-B/16 image encoder with per-view camera modulation (adaLN, no gate).

Module and parameter names follow the checkpoint (``encoder.model.*`` is a Hugging
Face ViTModel layout, see ``models.vit``, ``encoder.camera_embedder.*`` the camera MLP)
so the real weights load strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.instantmesh.config import LRMConfig
from models.vit import ViTConfig, ViTLayer, ViTModel


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class ModulatedViTLayer(ViTLayer):
    """A pre-norm ViT layer whose two LayerNorm outputs are shifted and scaled by the camera."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__(config)
        width = config.hidden_size
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 4 * width))

    def forward(self, x: torch.Tensor, camera_embedding: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, shift_mlp, scale_mlp = self.adaLN_modulation(camera_embedding).chunk(4, dim=-1)
        x = x + self.attention(modulate(self.layernorm_before(x), shift_msa, scale_msa))
        hidden = F.gelu(self.intermediate(modulate(self.layernorm_after(x), shift_mlp, scale_mlp)))
        return x + self.output(hidden)


class CameraModulatedEncoder(nn.Module):
    """Views [N, 3, H, W] in [0, 1] and cameras [N, 16] -> tokens [N, 1 + patches, hidden] (CLS first)."""

    def __init__(self, config: LRMConfig) -> None:
        super().__init__()
        width = config.vit.hidden_size
        # The checkpoint has no pooler.
        self.model = ViTModel(config.vit, with_pooler=False, layer=ModulatedViTLayer)
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
