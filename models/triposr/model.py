"""TripoSR: one RGB image -> triplane scene code -> NeRF density and colour.

Stages, each callable on its own (the golden checks start any of them from a recorded
input): ``preprocess`` (images -> ``rgb_cond``), ``image_tokens`` (DINO ViT),
``backbone_tokens`` (learned triplane tokens cross-attending to the image),
``scene_codes_from_tokens`` (detokenise + upsample), then ``field`` queries.
Top-level module names are the checkpoint's prefixes, so ``state_dict()`` has exactly
the keys of the released ``model.ckpt``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from models.triposr.backbone import TriplaneTokenizer, TriplaneTransformer, TriplaneUpsampler
from models.triposr.config import TripoSRConfig
from models.triposr.field import NeRFMLP, TriplaneNeRFField
from models.triposr.image_tokenizer import DinoImageTokenizer
from models.triposr.preprocess import ImageLike, conditioning_images


class TripoSR(nn.Module):
    def __init__(self, config: TripoSRConfig) -> None:
        super().__init__()
        self.config = config
        self.image_tokenizer = DinoImageTokenizer(config.vit)
        self.tokenizer = TriplaneTokenizer(config)
        self.backbone = TriplaneTransformer(config)
        self.post_processor = TriplaneUpsampler(config)
        self.decoder = NeRFMLP(config)

    @property
    def field(self) -> TriplaneNeRFField:
        """Density/colour queries on scene codes (``density_grid``, ``rgb``, ``query``, ``grid_to_world``)."""
        return TriplaneNeRFField(self.decoder, self.config)

    def preprocess(self, images: Sequence[ImageLike] | torch.Tensor) -> torch.Tensor:
        """RGB images (already framed and composited, see ``preprocess.prepare_rgba``) -> rgb_cond [B, S, S, 3] on CPU."""
        return conditioning_images(images, self.config.cond_image_size)

    def image_tokens(self, rgb_cond: torch.Tensor) -> torch.Tensor:
        """rgb_cond [B, S, S, 3] in [0, 1] -> [B, 1 + (S/patch)^2, D]."""
        weight = self.image_tokenizer.model.embeddings.patch_embeddings.projection.weight
        return self.image_tokenizer(rgb_cond.to(device=weight.device, dtype=weight.dtype))

    def backbone_tokens(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """-> triplane tokens [B, C, 3 * P * P], channels-first."""
        return self.backbone(self.tokenizer(image_tokens.shape[0]), image_tokens)

    def scene_codes_from_tokens(self, backbone_tokens: torch.Tensor) -> torch.Tensor:
        """-> scene codes [B, 3, C_out, 2P, 2P] (planes xy, xz, yz)."""
        return self.post_processor(self.tokenizer.detokenize(backbone_tokens))

    def encode(self, rgb_cond: torch.Tensor) -> torch.Tensor:
        """rgb_cond [B, S, S, 3] -> scene codes [B, 3, C_out, 2P, 2P]."""
        return self.scene_codes_from_tokens(self.backbone_tokens(self.image_tokens(rgb_cond)))

    forward = encode
