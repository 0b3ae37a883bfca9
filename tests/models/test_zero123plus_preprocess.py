"""Our PIL preprocessing equals transformers' CLIPImageProcessor (PIL backend) bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil

from models.zero123plus.components import FULL_CONFIG_DIR, TINY_CONFIG_DIR
from models.zero123plus.preprocess import preprocess

PROCESSORS = [
    FULL_CONFIG_DIR / "feature_extractor_vae",
    FULL_CONFIG_DIR / "feature_extractor_clip",
    TINY_CONFIG_DIR / "feature_extractor_vae",
]


@pytest.mark.parametrize("folder", PROCESSORS, ids=lambda p: f"{p.parent.name}-{p.name}")
@pytest.mark.parametrize("size", [(320, 320), (384, 384), (300, 410), (500, 261)])
def test_preprocess_is_bit_exact(folder, size):
    processor = CLIPImageProcessorPil.from_pretrained(folder)
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    expected = processor(images=image, return_tensors="pt").pixel_values
    ours = preprocess(image, processor)
    crop = processor.crop_size
    assert ours.crop_uint8.shape == (crop["height"], crop["width"], 3)
    assert ours.pixel_values.dtype == torch.float32
    assert torch.equal(ours.pixel_values, expected)
