"""DINO ViT-B/16 image tokenizer: conditioning images -> image tokens (the backbone's cross-attention context).

``image_tokenizer.model.*`` is a Hugging Face ViTModel (pooler included: it is in the
checkpoint though its output is never used). TripoSR normalises with the ImageNet
mean and std, not the 0.5/0.5 of DINO's own preprocessor config.
"""

from __future__ import annotations

import torch
from torch import nn

from models.vit import ViTConfig, ViTModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DinoImageTokenizer(nn.Module):
    def __init__(self, vit: ViTConfig) -> None:
        super().__init__()
        self.model = ViTModel(vit, with_pooler=True)
        # Constants, not buffers: no checkpoint carries them, and a model built on the meta
        # device and loaded by assignment would otherwise be left without them.
        self.image_mean = IMAGENET_MEAN
        self.image_std = IMAGENET_STD

    def forward(self, rgb_cond: torch.Tensor) -> torch.Tensor:
        """rgb_cond [B, S, S, 3] channels-last in [0, 1] -> tokens [B, 1 + (S/patch)^2, hidden], CLS first."""
        if rgb_cond.ndim != 4 or rgb_cond.shape[-1] != 3:
            raise ValueError(f"conditioning images [B, S, S, 3] expected, got {tuple(rgb_cond.shape)}")
        pixels = rgb_cond.permute(0, 3, 1, 2)
        mean = pixels.new_tensor(self.image_mean).view(1, 3, 1, 1)
        std = pixels.new_tensor(self.image_std).view(1, 3, 1, 1)
        pixels = (pixels - mean) / std
        return self.model(pixels)
