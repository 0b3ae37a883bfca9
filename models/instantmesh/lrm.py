"""The InstantMesh reconstruction model, NeRF variant: views + cameras -> triplanes -> density/colour field."""

from __future__ import annotations

import torch
from torch import nn

from models.instantmesh.config import LRMConfig
from models.instantmesh.encoder import CameraModulatedEncoder
from models.instantmesh.synthesizer import TriplaneSynthesizer
from models.instantmesh.transformer import TriplaneTransformer


class InstantNeRF(nn.Module):
    def __init__(self, config: LRMConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = CameraModulatedEncoder(config)
        self.transformer = TriplaneTransformer(config)
        self.synthesizer = TriplaneSynthesizer(config.triplane_dim)

    def encode(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        """images [B, V, 3, H, W] in [0, 1], cameras [B, V, 16] -> tokens [B*V, 1 + N, D], rows batch-major."""
        if images.ndim != 5 or cameras.ndim != 3 or images.shape[:2] != cameras.shape[:2]:
            raise ValueError(f"images [B, V, 3, H, W] and cameras [B, V, 16] expected, got {tuple(images.shape)} and {tuple(cameras.shape)}")
        return self.encoder(images.flatten(0, 1), cameras.flatten(0, 1))

    def planes_from_tokens(self, tokens: torch.Tensor, batch: int) -> torch.Tensor:
        # Views are concatenated in order, each with its CLS token, as one cross-attention context.
        context = tokens.reshape(batch, -1, tokens.shape[-1])
        return self.transformer(context)

    def forward_planes(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        """-> triplanes [B, 3, C, 2L, 2L]."""
        return self.planes_from_tokens(self.encode(images, cameras), images.shape[0])

    forward = forward_planes
