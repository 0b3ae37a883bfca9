"""TripoSR's input preparation: frame the foreground, composite over grey, resize to the conditioning size.

Each step reproduces the reference's arithmetic exactly, because the model was trained
on images prepared this way and the golden vectors check it bit for bit:

- framing crops the alpha > 0 bounding box with exclusive ends taken at the last
  non-zero row and column (so that row and column are dropped), pads to a square
  (the smaller half of the padding top/left), then pads to ``int(side / ratio)``;
- compositing is ``rgb * a + (1 - a) * 0.5`` in float32 and a truncating ``uint8`` cast;
- the resize to ``cond_image_size`` is torch's antialiased bilinear, aspect ratio not kept.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lift3d.errors import NoForeground

DEFAULT_FOREGROUND_RATIO = 0.85
BACKGROUND_GRAY = 0.5

ImageLike = Union[np.ndarray, Image.Image, torch.Tensor]


def _split(total: int) -> tuple[int, int]:
    return total // 2, total - total // 2


def frame_foreground(rgba: np.ndarray, ratio: float = DEFAULT_FOREGROUND_RATIO) -> np.ndarray:
    """uint8 [H, W, 4] -> uint8 [S, S, 4]: the object centred, filling ``ratio`` of the side."""
    if rgba.ndim != 3 or rgba.shape[-1] != 4:
        raise ValueError(f"foreground framing needs an RGBA image [H, W, 4], got {rgba.shape}")
    if not 0 < ratio <= 1:
        raise ValueError(f"foreground ratio must be in (0, 1], got {ratio}")
    rows, cols = np.nonzero(rgba[..., 3] > 0)
    if len(rows) == 0:
        raise NoForeground("the image has no foreground: every pixel is transparent")
    crop = rgba[rows.min() : rows.max(), cols.min() : cols.max()]
    side = max(crop.shape[0], crop.shape[1])
    if side == 0:
        raise NoForeground("the foreground is a single row or column of pixels: nothing to frame")
    top, bottom = _split(side - crop.shape[0])
    left, right = _split(side - crop.shape[1])
    square = np.pad(crop, ((top, bottom), (left, right), (0, 0)))
    margin_before, margin_after = _split(int(side / ratio) - side)
    return np.pad(square, ((margin_before, margin_after), (margin_before, margin_after), (0, 0)))


def composite_on_gray(rgba: np.ndarray, gray: float = BACKGROUND_GRAY) -> np.ndarray:
    """uint8 [H, W, 4] -> uint8 [H, W, 3] over a flat grey, truncated (not rounded) as the reference does."""
    image = rgba.astype(np.float32) / 255.0
    alpha = image[..., 3:4]
    blended = image[..., :3] * alpha + (1 - alpha) * np.float32(gray)
    return (blended * 255.0).astype(np.uint8)


def prepare_rgba(rgba: np.ndarray, foreground_ratio: float = DEFAULT_FOREGROUND_RATIO) -> np.ndarray:
    """A cut-out object (uint8 RGBA) -> the RGB image the model is given (uint8 [S, S, 3])."""
    return composite_on_gray(frame_foreground(rgba, foreground_ratio))


def _as_float_hwc(image: ImageLike) -> torch.Tensor:
    if isinstance(image, Image.Image):
        image = np.asarray(image)
    if isinstance(image, np.ndarray):
        # uint8 is scaled (in numpy float32, as the reference); float arrays are taken as they are.
        image = torch.from_numpy(image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else np.array(image))
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"an RGB image [H, W, 3] is needed, got shape {tuple(image.shape)}")
    return image


def conditioning_images(images: Sequence[ImageLike] | torch.Tensor, size: int) -> torch.Tensor:
    """RGB images (uint8 or float in [0, 1], each its own size) -> float32 [B, size, size, 3], channels-last.

    Each image is resized on its own; a [B, H, W, 3] tensor or array is resized as one batch.
    """
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        batch = torch.as_tensor(images)
        batch = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch
        return _resize(batch, size)
    return torch.cat([_resize(_as_float_hwc(image)[None], size) for image in images])


def _resize(batch: torch.Tensor, size: int) -> torch.Tensor:
    resized = F.interpolate(batch.permute(0, 3, 1, 2), (size, size), mode="bilinear", align_corners=False, antialias=True)
    return resized.permute(0, 2, 3, 1).contiguous()
