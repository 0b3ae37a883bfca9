"""Build TripoSR in each weights mode and load the released checkpoint strictly.

The released ``model.ckpt`` is a flat state dict: exactly the keys of
``TripoSR.state_dict()``, no container, no prefix, float32 (the ViT pooler included,
the ImageNet constants not). ``lift3d weights pull`` converts it to
``model.safetensors``; a ``model.ckpt`` on disk is read tensors-only as well.

In ``locked`` mode the pinned upstream ``config.yaml``, when present beside the
weights, must describe the same architecture as the shipped preset: a mismatch is
refused rather than loaded into the wrong shapes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch

from lift3d.errors import WeightsCorrupt
from lift3d.weights.catalog import TRIPOSR_CHECKPOINT, TRIPOSR_CONFIG, weights_missing
from models import checkpoints
from models.checkpoints import load_state_strict, read_checkpoint
from models.triposr.config import PRESETS_DIR, TripoSRConfig
from models.triposr.model import TripoSR

PRESET = "triposr"

WeightsMode = Literal["locked", "dummy", "tiny"]


def build_empty(config: TripoSRConfig) -> TripoSR:
    """The architecture on the meta device: no memory, no init cost (for loading or key inspection)."""
    return checkpoints.build_empty(lambda: TripoSR(config))


def build_random(config: TripoSRConfig, *, device: torch.device | str = "cpu", seed: int | None = None) -> TripoSR:
    """Random init directly on ``device``; seeded (independently of the global RNG) when ``seed`` is given."""
    return checkpoints.build_random(lambda: TripoSR(config), device=device, seed=seed)


def load_pretrained(config: TripoSRConfig, path: Path, *, device: torch.device | str = "cpu") -> TripoSR:
    model = build_empty(config)
    load_state_strict(model, read_checkpoint(path))
    return model.to(device)


def checkpoint_path(weights_dir: Path) -> Path:
    """The converted safetensors file, or the upstream ``model.ckpt`` if that is what is on disk."""
    converted = Path(weights_dir).expanduser() / TRIPOSR_CHECKPOINT
    found = checkpoints.find_checkpoint(converted.parent, converted.stem)
    if found is not None:
        return found
    raise weights_missing([TRIPOSR_CHECKPOINT], weights_dir)


def check_upstream_config(config: TripoSRConfig, weights_dir: Path) -> None:
    """Refuse a pinned ``config.yaml`` that describes another architecture than ``config``."""
    path = Path(weights_dir).expanduser() / TRIPOSR_CONFIG
    if not path.is_file():
        return
    vit = json.loads((PRESETS_DIR / f"{PRESET}.json").read_text())["vit"]
    try:
        upstream = TripoSRConfig.from_upstream_yaml(path.read_text(), vit)
    except (ValueError, KeyError, TypeError) as error:
        raise WeightsCorrupt(f"{path} is not a TripoSR config this implementation can build: {error}") from error
    ours = {k: v for k, v in vars(config).items() if k not in ("name", "mesh_resolution", "mesh_threshold", "seed")}
    theirs = {k: v for k, v in vars(upstream).items() if k in ours}
    differences = sorted(k for k in ours if ours[k] != theirs[k])
    if differences:
        raise WeightsCorrupt(f"{path} differs from the shipped TripoSR config in {differences}")


def load_for_mode(mode: WeightsMode, *, weights_dir: Path, device: torch.device | str) -> TripoSR:
    """The model for a weights mode: locked = released checkpoint, dummy = full-size random, tiny = own small config."""
    if mode == "tiny":
        config = TripoSRConfig.preset("tiny")
        return build_random(config, device=device, seed=config.seed).eval()
    config = TripoSRConfig.preset(PRESET)
    if mode == "dummy":
        return build_random(config, device=device).eval()
    if mode == "locked":
        path = checkpoint_path(weights_dir)
        check_upstream_config(config, weights_dir)
        return load_pretrained(config, path, device=device).eval()
    raise ValueError(f"unknown weights mode {mode!r}")
