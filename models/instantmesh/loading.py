"""Build the reconstruction model in each weights mode and load the real checkpoint layout strictly.

The real ``instant_nerf_*.ckpt`` and ``instant_mesh_*.ckpt`` are a PyTorch Lightning checkpoint: its ``state_dict``
holds the whole training module, in which the reconstruction model is
``lrm_generator``. We keep only ``lrm_generator.*`` keys, strip that prefix and load
with strict matching. Keys under that prefix that the reference deliberately drops
(``KNOWN_DROPPED_KEY_PARTS``: stale ``source_camera`` buffers of the training
module) are removed by name and reported, never tolerated by a loose load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

import torch

from models import checkpoints
from models.checkpoints import load_state_strict, read_checkpoint
from models.instantmesh.config import TINY_PRESETS, LRMConfig, variant_of
from models.instantmesh.lrm import InstantMesh, InstantNeRF, TriplaneLRM
from lift3d.errors import WeightsCorrupt
from lift3d.weights.catalog import reconstruct_path, weights_missing

log = logging.getLogger("lift3d.instantmesh")

KEY_PREFIX = "lrm_generator."
CONTAINER_KEY = "state_dict"
KNOWN_DROPPED_KEY_PARTS = ("source_camera",)


@dataclass
class LoadReport:
    loaded: int = 0
    dropped: list[str] = field(default_factory=list)  # known reference-dropped keys, by full name
    ignored_outside_prefix: int = 0  # other parts of the training module (e.g. loss networks)


def extract_lrm_state_dict(checkpoint: Mapping[str, object]) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Checkpoint (Lightning container or bare state dict) -> the model's own keys, prefix stripped."""
    state = checkpoint.get(CONTAINER_KEY, checkpoint)
    if not isinstance(state, Mapping):
        raise WeightsCorrupt(f"checkpoint entry {CONTAINER_KEY!r} is not a state dict")
    report = LoadReport()
    ours: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(KEY_PREFIX):
            report.ignored_outside_prefix += 1
            continue
        if any(part in key for part in KNOWN_DROPPED_KEY_PARTS):
            report.dropped.append(key)
            continue
        if not isinstance(value, torch.Tensor):
            raise WeightsCorrupt(f"checkpoint key {key!r} is not a tensor")
        ours[key[len(KEY_PREFIX) :]] = value
    if not ours:
        raise WeightsCorrupt(f"checkpoint holds no {KEY_PREFIX!r} keys: not an InstantMesh LRM checkpoint")
    report.loaded = len(ours)
    return ours, report


def model_class(config: LRMConfig) -> type[TriplaneLRM]:
    return InstantMesh if config.variant == "mesh" else InstantNeRF


def build_empty(config: LRMConfig) -> TriplaneLRM:
    """The architecture on the meta device: no memory, no init cost (for loading or key inspection)."""
    return checkpoints.build_empty(lambda: model_class(config)(config))


def build_random(config: LRMConfig, *, device: torch.device | str = "cpu", seed: int | None = None) -> TriplaneLRM:
    """Random init directly on ``device``; seeded (independently of the global RNG) when ``seed`` is given."""
    return checkpoints.build_random(lambda: model_class(config)(config), device=device, seed=seed)


def load_pretrained(config: LRMConfig, path: Path, *, device: torch.device | str = "cpu") -> tuple[TriplaneLRM, LoadReport]:
    state, report = extract_lrm_state_dict(read_checkpoint(path))
    model = build_empty(config)
    load_state_strict(model, state)
    if report.dropped:
        log.info("dropped %d key(s) the reference drops too: %s", len(report.dropped), report.dropped)
    return model.to(device), report


def checkpoint_path(weights_dir: Path, preset: str) -> Path:
    """The converted safetensors file, or the upstream ``.ckpt`` if that is what is on disk."""
    converted = Path(weights_dir).expanduser() / reconstruct_path(preset)
    found = checkpoints.find_checkpoint(converted.parent, converted.stem)
    if found is not None:
        return found
    raise weights_missing([reconstruct_path(preset)], weights_dir)


WeightsMode = Literal["locked", "dummy", "tiny"]


def load_for_mode(
    mode: WeightsMode, preset: str, *, weights_dir: Path, device: torch.device | str
) -> tuple[TriplaneLRM, LoadReport | None]:
    """The model for a weights mode: locked = real checkpoint, dummy = full-size random, tiny = own small config
    (of the preset's variant)."""
    if mode == "tiny":
        config = LRMConfig.preset(TINY_PRESETS[variant_of(preset)])  # type: ignore[arg-type]
        return build_random(config, device=device, seed=config.seed).eval(), None
    config = LRMConfig.preset(preset)  # type: ignore[arg-type]
    if mode == "dummy":
        return build_random(config, device=device).eval(), None
    if mode == "locked":
        model, report = load_pretrained(config, checkpoint_path(weights_dir, preset), device=device)
        return model.eval(), report
    raise ValueError(f"unknown weights mode {mode!r}")
