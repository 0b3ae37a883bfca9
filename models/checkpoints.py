"""Checkpoint reading and strict loading shared by the reconstruction models.

Checkpoints are read as safetensors or as tensors-only pickles (``weights_only=True``),
never by unrestricted unpickling. Loading is by assignment onto a model built on the
meta device, so a multi-GB model is never initialised only to be overwritten.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Callable, Mapping, TypeVar

import torch
from torch import nn

from lift3d.errors import WeightsCorrupt

ModelT = TypeVar("ModelT", bound=nn.Module)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or of a ``.ckpt``/``.bin`` pickle that holds nothing but tensors."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        # mmap keeps a multi-GB file out of RAM, but only torch's zip format supports it.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:  # weights_only refuses anything but tensors and plain containers
        raise WeightsCorrupt(
            f"{path.name} could not be read as a tensors-only checkpoint ({type(error).__name__}); "
            "convert it with `lift3d weights pull`"
        ) from error
    if not isinstance(checkpoint, dict):
        raise WeightsCorrupt(f"{path.name} does not hold a state dict")
    return checkpoint


def find_checkpoint(folder: Path, stem: str) -> Path | None:
    """``stem.safetensors`` (what ``lift3d weights pull`` installs), else an upstream ``stem.ckpt``, else None."""
    for suffix in (".safetensors", ".ckpt"):
        candidate = Path(folder).expanduser() / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Strict load by assignment (the model may live on the meta device); shapes and names must match exactly."""
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise WeightsCorrupt(f"checkpoint entries are not tensors: {not_tensors[:3]}")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise WeightsCorrupt(
            "checkpoint does not match the model: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong)} with wrong shapes (e.g. {wrong[:3]})"
        )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)


def build_empty(factory: Callable[[], ModelT]) -> ModelT:
    """The architecture on the meta device: no memory, no init cost (for loading or key inspection)."""
    with torch.device("meta"):
        return factory()


def build_random(factory: Callable[[], ModelT], *, device: torch.device | str = "cpu", seed: int | None = None) -> ModelT:
    """Random init directly on ``device``; seeded (independently of the global RNG) when ``seed`` is given."""
    device = torch.device(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        with torch.device(device):
            return factory()
