"""Build the Zero123++ pipeline for a weights mode: locked (real files), dummy (full size, random), tiny."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from lift3d.weights.catalog import INSTANTMESH_UNET, ZERO123PLUS_DIR
from models.zero123plus.components import (
    FULL_CONFIG_DIR,
    TINY_CONFIG_DIR,
    build_random_components,
    load_components,
    swap_unet_weights,
)
from models.zero123plus.pipeline import Zero123PlusPipeline
from models.zero123plus.preprocess import BACKGROUNDS


# The grid the model was trained at: 3 rows x 2 columns of 320 px views.
FULL_SIZE = (640, 960)
# Tiny mode generates a quarter of the pixels (160 px views) so whole jobs stay fast on CPU;
# the stage resizes the result to the 320 px contract.
TINY_SIZE = (320, 480)
TINY_SEED = 0
DUMMY_SEED = 0

Variant = Literal["instantmesh", "official"]


@dataclass
class MultiviewModel:
    pipeline: Zero123PlusPipeline
    width: int
    height: int
    info: dict[str, object] = field(default_factory=dict)
    # Intra-op CPU threads while this model runs (None: leave torch's setting alone).
    cpu_threads: int | None = None


def build_multiview_model(
    mode: str, *, weights_dir: Path, variant: Variant, device: torch.device, dtype: torch.dtype
) -> MultiviewModel:
    background = BACKGROUNDS[variant]
    if mode == "tiny":
        components = build_random_components(TINY_CONFIG_DIR, device=device, dtype=dtype, seed=TINY_SEED)
        info = {"model": "lift3d tiny Zero123++ (random weights)", "config": "models/zero123plus/configs/tiny"}
        # Tiny convolutions are too small to split: one thread ran a 3-step job in 0.7 s where two took
        # 4.4 s on a busy 2-core machine.
        pipeline = Zero123PlusPipeline(components, background_rgb=background)
        return MultiviewModel(pipeline, *TINY_SIZE, info, cpu_threads=1 if device.type == "cpu" else None)
    if mode == "dummy":
        # Library initialisation on the target device, seeded without leaking into the process RNG.
        cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(DUMMY_SEED)
            components = build_random_components(FULL_CONFIG_DIR, device=device, dtype=dtype, seed=None)
        info = {"model": "Zero123++ v1.2 architecture (random weights)", "config": "models/zero123plus/configs/full"}
        return MultiviewModel(Zero123PlusPipeline(components, background_rgb=background), *FULL_SIZE, info)
    if mode == "locked":
        components = load_components(Path(weights_dir) / ZERO123PLUS_DIR, device=device, dtype=dtype)
        info: dict[str, object] = {"model": ZERO123PLUS_DIR}
        if variant == "instantmesh":
            swap_unet_weights(components.unet, Path(weights_dir) / INSTANTMESH_UNET)
            info["unet"] = INSTANTMESH_UNET
        return MultiviewModel(Zero123PlusPipeline(components, background_rgb=background), *FULL_SIZE, info)
    raise ValueError(f"unknown weights mode {mode!r}")
