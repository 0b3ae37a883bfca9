"""TripoSR's NeRF field: the MLP decoder and density/colour queries at world points and on a grid.

World points live in the cube [-radius, radius]^3 and map linearly to the planes' [-1, 1].
Plane 0 is sampled at (x, y), plane 1 at (x, z), plane 2 at (y, z), the first coordinate
along the plane's width. The decoder's channel 0 is raw density (activated after adding
``density_bias``), channels 1..3 colour logits (sigmoid).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.triplane import evaluate_on_grid, sample_triplanes
from models.triposr.config import TripoSRConfig

PLANE_AXES = ((0, 1), (0, 2), (1, 2))
DEFAULT_POINTS_CHUNK = 1 << 20


class NeRFMLP(nn.Module):
    """Concatenated plane features -> 4 raw outputs; Linear/activation pairs keep the checkpoint's ``layers.K`` numbering."""

    def __init__(self, config: TripoSRConfig) -> None:
        super().__init__()
        activation = {"silu": nn.SiLU, "relu": nn.ReLU}[config.decoder_activation]
        width = config.decoder_neurons
        layers: list[nn.Module] = [nn.Linear(config.decoder_in_channels, width), activation()]
        for _ in range(config.decoder_hidden_layers - 1):
            layers += [nn.Linear(width, width), activation()]
        layers.append(nn.Linear(width, 4))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


@dataclass
class FieldSample:
    density_raw: torch.Tensor  # [B, P, 1] decoder channel 0
    density: torch.Tensor  # [B, P, 1] activated (density_bias added first)
    features_raw: torch.Tensor  # [B, P, 3] colour logits
    rgb: torch.Tensor  # [B, P, 3] sigmoid of the logits


class TriplaneNeRFField:
    """Queries of a decoder on scene codes [B, 3, C, H, W]; holds no weights of its own."""

    def __init__(self, decoder: NeRFMLP, config: TripoSRConfig) -> None:
        self.decoder = decoder
        self.radius = config.radius
        self.density_bias = config.density_bias
        self.density_activation = config.density_activation

    def to_plane_units(self, points: torch.Tensor) -> torch.Tensor:
        """World [-radius, radius] -> [-1, 1], in the reference's order of operations."""
        r = self.radius
        return (points - (-r)) / (r - (-r)) * 2 + (-1)

    def raw(self, scene_codes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Decoder outputs [B, P, 4] at world points [B, P, 3]."""
        features = sample_triplanes(scene_codes, self.to_plane_units(points), PLANE_AXES)
        return self.decoder(features)

    def activate_density(self, raw: torch.Tensor) -> torch.Tensor:
        shifted = raw + self.density_bias
        if self.density_activation == "exp":
            return torch.exp(shifted)
        if self.density_activation == "softplus":
            return F.softplus(shifted)
        return shifted

    def query(self, scene_codes: torch.Tensor, points: torch.Tensor) -> FieldSample:
        out = self.raw(scene_codes, points)
        density_raw, features_raw = out[..., :1], out[..., 1:]
        return FieldSample(density_raw, self.activate_density(density_raw), features_raw, torch.sigmoid(features_raw))

    def density(self, scene_codes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Activated density [B, P] (skips the colour activation)."""
        return self.activate_density(self.raw(scene_codes, points)[..., 0])

    def rgb(self, scene_codes: torch.Tensor, points: torch.Tensor, *, chunk: int = DEFAULT_POINTS_CHUNK) -> torch.Tensor:
        """Colours [B, P, 3] in [0, 1], queried ``chunk`` points at a time so memory stays bounded."""
        parts = [
            torch.sigmoid(self.raw(scene_codes, points[:, i : i + chunk])[..., 1:]) for i in range(0, points.shape[1], chunk)
        ]
        return torch.cat(parts, dim=1)

    def grid_axis(self, resolution: int, device: torch.device | str | None = None) -> torch.Tensor:
        """World coordinates of the grid's samples along each axis: [0, 1] in R steps, rescaled to the cube."""
        r = self.radius
        unit = torch.linspace(0.0, 1.0, resolution, device=device, dtype=torch.float32)
        return unit * (r - (-r)) + (-r)

    def density_grid(
        self,
        scene_codes: torch.Tensor,
        resolution: int,
        *,
        chunk: int = DEFAULT_POINTS_CHUNK,
        between_chunks: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Activated density [B, R, R, R]; [i, j, k] is at (x_i, y_j, z_k), the cube's corners included."""
        axis = self.grid_axis(resolution, scene_codes.device)
        return evaluate_on_grid(
            lambda points: self.density(scene_codes, points),
            axis,
            scene_codes.shape[0],
            chunk=chunk,
            between_chunks=between_chunks,
        )

    def grid_to_world(self, vertices: torch.Tensor, resolution: int) -> torch.Tensor:
        """Index-space marching-cubes vertices on a ``density_grid`` of ``resolution`` -> world points."""
        r = self.radius
        return vertices / (resolution - 1) * (r - (-r)) + (-r)
