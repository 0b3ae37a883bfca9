"""Where the surface of a field is taken: the trained models' fixed levels, and the rules for random weights.

A trained NeRF's surface is density 10 and a trained sdf's is 0. Random weights
(``tiny``, ``dummy``) have no such scale, so the level is a quantile of the grid (the
midpoint between two neighbouring order statistics, so no grid value sits on it) and
the grid's outer layer is moved to the outside so the surface closes at the box.
"""

from __future__ import annotations

import torch

from lift3d.settings import ReconstructSettings


def choose_iso_level(grid: torch.Tensor, *, weights_mode: str, settings: ReconstructSettings) -> tuple[float, str]:
    if weights_mode == "locked":
        return float(settings.density_threshold), f"threshold {settings.density_threshold:g}"
    quantile = float(settings.random_weights_iso_quantile)
    flat = grid.reshape(-1)
    k = min(max(int(quantile * flat.numel()), 1), flat.numel() - 1)
    lower = flat.kthvalue(k).values
    upper = flat.kthvalue(k + 1).values
    level = float((lower.double() + upper.double()) / 2)
    return level, f"quantile {quantile:g} of the density grid ({weights_mode} weights: density has no scale)"


def close_at_border(grid: torch.Tensor, level: float) -> torch.Tensor:
    """Push the outer layer below ``level`` so the iso-surface of a random field is closed."""
    closed = grid.clone()
    floor = min(float(grid.min()), level) - 1.0
    for axis in range(3):
        closed.narrow(axis, 0, 1).fill_(floor)
        closed.narrow(axis, closed.shape[axis] - 1, 1).fill_(floor)
    return closed


def choose_sdf_level(sdf: torch.Tensor, *, weights_mode: str, settings: ReconstructSettings) -> tuple[float, str]:
    """The mesh variants' surface level: 0 for a trained sdf, the matching quantile for random weights."""
    if weights_mode == "locked":
        return 0.0, "sdf zero level"
    # The density rule keeps the top (1 - q) of the grid inside; for an sdf inside is below the level.
    flipped = ReconstructSettings(random_weights_iso_quantile=1 - settings.random_weights_iso_quantile)
    level, _ = choose_iso_level(sdf, weights_mode=weights_mode, settings=flipped)
    return level, f"quantile {1 - settings.random_weights_iso_quantile:g} of the grid sdf ({weights_mode} weights: sdf has no zero)"


def close_sdf_at_border(sdf: torch.Tensor, grid_res: int) -> torch.Tensor:
    """Outer grid vertices made outside (positive) so a random field's surface closes."""
    n = grid_res + 1
    cube = sdf.reshape(n, n, n).clone()
    ceiling = max(float(sdf.max()), 0.0) + 1.0
    for axis in range(3):
        cube.narrow(axis, 0, 1).fill_(ceiling)
        cube.narrow(axis, n - 1, 1).fill_(ceiling)
    return cube.reshape(-1)
