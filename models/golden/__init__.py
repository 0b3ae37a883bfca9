"""Golden-vector checks: prove our model code equals the reference implementations.

Each golden set folder holds ``golden.json`` with ``{"model": ..., "set": ...}``; the
``model`` value picks a checker from ``CHECKERS``. A checker module exposes
``check_set(set_dir: Path, *, verbose: bool) -> list[CaseReport]``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from models.golden.compare import CaseReport, TensorCheck

__all__ = ["CHECKERS", "CaseReport", "TensorCheck", "find_sets", "check_path"]

# golden.json "model" -> module implementing check_set()
CHECKERS: dict[str, str] = {
    "zero123plus": "models.zero123plus.golden",
    "instantmesh-nerf": "models.instantmesh.golden",
    "instantmesh-mesh": "models.instantmesh.golden_mesh",
    "triposr": "models.triposr.golden",
}


def find_sets(root: Path) -> list[Path]:
    """Every set folder at or below ``root`` (a folder holding golden.json)."""
    root = Path(root)
    if (root / "golden.json").is_file():
        return [root]
    return sorted(path.parent for path in root.rglob("golden.json"))


def read_model_name(set_dir: Path) -> str:
    return json.loads((set_dir / "golden.json").read_text())["model"]


def check_set(set_dir: Path, *, verbose: bool = False) -> list[CaseReport]:
    model = read_model_name(set_dir)
    if model not in CHECKERS:
        raise LookupError(model)
    module = importlib.import_module(CHECKERS[model])
    return module.check_set(set_dir, verbose=verbose)
