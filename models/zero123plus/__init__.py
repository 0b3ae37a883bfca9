"""Zero123++ v1.2 multiview diffusion: our own pipeline on diffusers/transformers components."""

from models.zero123plus.components import (
    FULL_CONFIG_DIR,
    TINY_CONFIG_DIR,
    Zero123PlusComponents,
    build_random_components,
    load_components,
    swap_unet_weights,
)
from models.zero123plus.pipeline import MultiviewOutput, Zero123PlusPipeline
from models.zero123plus.views import VIEW_POSES, ViewPose

__all__ = [
    "FULL_CONFIG_DIR",
    "TINY_CONFIG_DIR",
    "MultiviewOutput",
    "VIEW_POSES",
    "ViewPose",
    "Zero123PlusComponents",
    "Zero123PlusPipeline",
    "build_random_components",
    "load_components",
    "swap_unet_weights",
]
