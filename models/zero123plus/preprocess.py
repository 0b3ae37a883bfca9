"""Condition-image preprocessing: background compositing and the two CLIPImageProcessor branches.

The resize and crop are done here with PIL (as CLIPImageProcessor does them) so
the uint8 crops are visible to the golden checks; ``tests/test_zero123plus_preprocess.py``
proves the float tensors equal the processors' own output bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil

# Background the reference composites RGBA inputs onto, per pipeline variant.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"official": (127, 127, 127), "instantmesh": (255, 255, 255)}


def composite_on_background(image: Image.Image, background_rgb: tuple[int, int, int]) -> Image.Image:
    """RGBA -> RGB on a flat background (PIL paste with the alpha mask); RGB passes through."""
    if image.mode == "RGB":
        return image
    if image.mode != "RGBA":
        raise ValueError(f"the condition image must be RGB or RGBA, got {image.mode}")
    flat = Image.new("RGB", image.size, tuple(background_rgb))
    flat.paste(image, mask=image.getchannel("A"))
    return flat


@dataclass(frozen=True)
class ProcessedImage:
    crop_uint8: np.ndarray  # [H, W, 3] after resize and centre crop
    pixel_values: torch.Tensor  # [1, 3, H, W] float32, normalised


def _shortest_edge_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    # transformers' rule for {"shortest_edge": s} (default_to_square=False): the long side truncates.
    if width <= height:
        return shortest_edge, int(shortest_edge * height / width)
    return int(shortest_edge * width / height), shortest_edge


def _as_channel_vector(value: float | list[float]) -> torch.Tensor:
    values = [value] * 3 if isinstance(value, (int, float)) else list(value)
    return torch.tensor(values, dtype=torch.float32).view(3, 1, 1)


def preprocess(image: Image.Image, processor: CLIPImageProcessorPil) -> ProcessedImage:
    """What ``processor(images=image).pixel_values`` computes, keeping the uint8 crop."""
    if not (processor.do_resize and processor.do_center_crop and processor.do_rescale and processor.do_normalize):
        raise ValueError("Zero123++ preprocessors resize, crop, rescale and normalise; this config does not")
    image = image.convert("RGB")
    resized = image.resize(
        _shortest_edge_size(*image.size, processor.size["shortest_edge"]), resample=Image.Resampling(processor.resample)
    )
    array = np.asarray(resized)
    crop_h, crop_w = processor.crop_size["height"], processor.crop_size["width"]
    top = (array.shape[0] - crop_h) // 2
    left = (array.shape[1] - crop_w) // 2
    if top < 0 or left < 0:
        raise ValueError("the resized image is smaller than the crop")
    crop = np.ascontiguousarray(array[top : top + crop_h, left : left + crop_w])
    # Rescale in float64 and round once to float32, as transformers does; then normalise in float32.
    pixels = (torch.from_numpy(crop.copy()).permute(2, 0, 1).double() * processor.rescale_factor).float()
    pixels = (pixels - _as_channel_vector(processor.image_mean)) / _as_channel_vector(processor.image_std)
    return ProcessedImage(crop_uint8=crop, pixel_values=pixels.unsqueeze(0))
