"""Convert a pickled PyTorch file (.bin state_dict, Lightning .ckpt) to safetensors, once.

The pickle is read with ``torch.load(weights_only=True)``: tensors and plain
containers only, so a tampered file cannot run code. The server then only ever
opens safetensors.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

from lift3d.weights.lock import Conversion
from lift3d.errors import WeightsCorrupt


def load_state_dict(source: Path, conversion: Conversion) -> dict[str, Any]:
    import torch

    # mmap keeps a multi-GB checkpoint out of RAM; only the zip serialisation supports it.
    mmap = zipfile.is_zipfile(source)
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise WeightsCorrupt(
            f"{source.name} cannot be read as tensors-only (torch.load weights_only=True): {error}"
        ) from error
    if conversion == "checkpoint-state-dict":
        if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
            raise WeightsCorrupt(f"{source.name} is not a checkpoint with a 'state_dict' mapping")
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(k, str) for k in payload):
        raise WeightsCorrupt(f"{source.name} does not hold a state_dict (name -> tensor)")
    tensors = {name: value for name, value in payload.items() if isinstance(value, torch.Tensor)}
    if len(tensors) != len(payload):
        skipped = sorted(set(payload) - set(tensors))[:5]
        raise WeightsCorrupt(f"{source.name} has non-tensor entries in its state_dict, e.g. {skipped}")
    return tensors


def to_safetensors(source: Path, dest: Path, conversion: Conversion) -> Path:
    """Write ``dest`` (atomically) with the tensors of ``source``; keys unchanged."""
    from safetensors.torch import save_file

    tensors = load_state_dict(source, conversion)
    seen_storage: set[tuple[int, int]] = set()
    contiguous = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().contiguous()
        # safetensors refuses tensors that share memory (tied weights): give each its own copy.
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen_storage or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        seen_storage.add((tensor.untyped_storage().data_ptr(), tensor.storage_offset()))
        contiguous[name] = tensor
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    try:
        save_file(contiguous, str(partial), metadata={"format": "pt", "converted_from": source.name})
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    return dest
