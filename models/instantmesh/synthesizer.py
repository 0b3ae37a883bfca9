"""Triplane NeRF field: density and colour at any batch of world points, and on a regular grid.

World coordinates are used unchanged (box_warp 2): the planes cover [-1, 1] on every axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.triplane import evaluate_on_grid, sample_triplanes

# Which two world axes each plane is sampled at, as (u along width, v along height).
PLANE_AXES = ((0, 1), (0, 2), (2, 1))
RGB_PADDING = 0.001
DEFAULT_POINTS_CHUNK = 1 << 20


class NeRFDecoder(nn.Module):
    """MLP from concatenated triplane features to raw density and colour logits."""

    def __init__(self, in_features: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 4),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def activate_density(raw: torch.Tensor) -> torch.Tensor:
    return F.softplus(raw - 1)


def activate_rgb(logits: torch.Tensor) -> torch.Tensor:
    """sigmoid widened by a small margin so 0 and 1 are reachable; deliberately not clamped."""
    return torch.sigmoid(logits) * (1 + 2 * RGB_PADDING) - RGB_PADDING


@dataclass
class FieldSample:
    sigma_raw: torch.Tensor  # [B, P, 1] decoder channel 0
    sigma: torch.Tensor  # [B, P, 1] activated density
    rgb: torch.Tensor  # [B, P, 3]


class TriplaneSynthesizer(nn.Module):
    def __init__(self, triplane_dim: int) -> None:
        super().__init__()
        self.decoder = NeRFDecoder(3 * triplane_dim)

    def raw(self, planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return self.decoder(sample_triplanes(planes, points, PLANE_AXES))

    def query(self, planes: torch.Tensor, points: torch.Tensor) -> FieldSample:
        out = self.raw(planes, points)
        return FieldSample(sigma_raw=out[..., :1], sigma=activate_density(out[..., :1]), rgb=activate_rgb(out[..., 1:]))

    def density(self, planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Activated density [B, P] (skips the colour activation)."""
        return activate_density(self.raw(planes, points)[..., 0])

    def rgb(self, planes: torch.Tensor, points: torch.Tensor, *, chunk: int = DEFAULT_POINTS_CHUNK) -> torch.Tensor:
        """Colours [B, P, 3] queried ``chunk`` points at a time, so memory stays bounded."""
        parts = [activate_rgb(self.raw(planes, points[:, i : i + chunk])[..., 1:]) for i in range(0, points.shape[1], chunk)]
        return torch.cat(parts, dim=1)

    def density_grid(
        self,
        planes: torch.Tensor,
        resolution: int,
        *,
        chunk: int = DEFAULT_POINTS_CHUNK,
        between_chunks: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Activated density [B, R, R, R]; element [i, j, k] is at (x_i, y_j, z_k), x_i = linspace(-1, 1, R)[i].

        Built a slab of x at a time, so at R = 256 only ``chunk`` points are in flight.
        """
        axis = torch.linspace(-1.0, 1.0, resolution, device=planes.device, dtype=torch.float32)
        return evaluate_on_grid(
            lambda points: self.density(planes, points), axis, planes.shape[0], chunk=chunk, between_chunks=between_chunks
        )

    @staticmethod
    def grid_to_world(vertices: torch.Tensor, resolution: int) -> torch.Tensor:
        """Index-space marching-cubes vertices on a ``density_grid`` of ``resolution`` -> world points."""
        return vertices / (resolution - 1) * 2 - 1
