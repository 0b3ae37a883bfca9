"""The six views of a Zero123++ v1.2 grid: layout and camera poses."""

from __future__ import annotations

from dataclasses import dataclass

import torch

GRID_ROWS = 3
GRID_COLS = 2

# Row-major order of the grid; v1.2 cameras: azimuth relative to the input view, elevation in degrees.
VIEW_AZIMUTHS = (30.0, 90.0, 150.0, 210.0, 270.0, 330.0)
VIEW_ELEVATIONS = (20.0, -10.0, 20.0, -10.0, 20.0, -10.0)


@dataclass(frozen=True)
class ViewPose:
    azimuth: float
    elevation: float

    def as_dict(self) -> dict[str, float]:
        return {"azimuth": self.azimuth, "elevation": self.elevation}


VIEW_POSES = tuple(ViewPose(a, e) for a, e in zip(VIEW_AZIMUTHS, VIEW_ELEVATIONS))


def split_grid(grid: torch.Tensor) -> torch.Tensor:
    """[3, H, W] grid (3 rows x 2 columns) -> [6, 3, H/3, W/2] views in row-major order."""
    channels, height, width = grid.shape
    if height % GRID_ROWS or width % GRID_COLS:
        raise ValueError(f"a {height}x{width} grid does not split into {GRID_ROWS}x{GRID_COLS} views")
    view_h, view_w = height // GRID_ROWS, width // GRID_COLS
    views = grid.reshape(channels, GRID_ROWS, view_h, GRID_COLS, view_w)
    return views.permute(1, 3, 0, 2, 4).reshape(GRID_ROWS * GRID_COLS, channels, view_h, view_w)
