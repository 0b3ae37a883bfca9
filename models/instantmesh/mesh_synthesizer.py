"""Triplane field of the mesh (FlexiCubes) variant: sdf, vertex deformation, cube weights and colour.

Four MLP heads share the triplane features of the NeRF variant (same sampling rule, same
plane axes): ``net_sdf`` (raw sdf), ``net_deformation`` (raw offsets, bounded by tanh to a
quarter cube), ``net_rgb`` (colour) and ``net_weight``, which reads the features of a
cube's 8 corners concatenated in corner order and gives the 21 FlexiCubes weights.
Parameter names follow the checkpoint (``synthesizer.decoder.net_*.{0,2,4,6}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from models.instantmesh.synthesizer import DEFAULT_POINTS_CHUNK, PLANE_AXES, activate_rgb
from models.isosurface.flexicubes import WEIGHT_CHANNELS
from models.triplane import sample_triplanes

HIDDEN = 64
WEIGHT_OUTPUT_SCALE = 0.1  # the reference damps the weight head's output by this factor
DEFORMATION_MULTIPLIER = 4.0  # offsets are at most 1 / (4 G): a quarter of a cube


def _mlp(in_features: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, out_features),
    )


class MeshDecoder(nn.Module):
    def __init__(self, triplane_dim: int) -> None:
        super().__init__()
        features = 3 * triplane_dim
        self.net_sdf = _mlp(features, 1)
        self.net_rgb = _mlp(features, 3)
        self.net_deformation = _mlp(features, 3)
        self.net_weight = _mlp(8 * features, WEIGHT_CHANNELS)


@dataclass
class GridPrediction:
    sdf: torch.Tensor  # [B, N] at the grid vertices
    deformation: torch.Tensor  # [B, N, 3] world offsets, at most 1 / (4 G) per axis
    weight: torch.Tensor  # [B, F', 21] raw FlexiCubes weights of the requested cubes


class MeshSynthesizer(nn.Module):
    def __init__(self, triplane_dim: int) -> None:
        super().__init__()
        self.decoder = MeshDecoder(triplane_dim)

    def features(self, planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return sample_triplanes(planes, points, PLANE_AXES)

    def geometry(self, planes: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points [B, P, 3] -> raw sdf [B, P, 1] and raw deformation [B, P, 3] (no activation)."""
        features = self.features(planes, points)
        return self.decoder.net_sdf(features), self.decoder.net_deformation(features)

    def rgb(self, planes: torch.Tensor, points: torch.Tensor, *, chunk: int = DEFAULT_POINTS_CHUNK) -> torch.Tensor:
        """Colours [B, P, 3] (not clamped), ``chunk`` points at a time."""
        if points.shape[1] == 0:
            return points.new_zeros(points.shape[0], 0, 3)
        parts = [
            activate_rgb(self.decoder.net_rgb(self.features(planes, points[:, i : i + chunk])))
            for i in range(0, points.shape[1], chunk)
        ]
        return torch.cat(parts, dim=1)

    def cube_weights(
        self, planes: torch.Tensor, vertices: torch.Tensor, cubes: torch.Tensor, *, chunk: int = DEFAULT_POINTS_CHUNK
    ) -> torch.Tensor:
        """Undeformed grid vertices [N, 3], cubes [F', 8] -> raw weights [B, F', 21], already damped by 0.1.

        Only the given cubes are evaluated, ``chunk`` corner samples at a time, so at grid
        128 the caller can ask for the surface cubes alone.
        """
        batch = planes.shape[0]
        per_chunk = max(1, chunk // 8)
        parts = []
        for start in range(0, cubes.shape[0], per_chunk):
            corners = vertices[cubes[start : start + per_chunk].reshape(-1)]  # [F'' * 8, 3]
            features = self.features(planes, corners.unsqueeze(0).expand(batch, -1, -1))
            features = features.reshape(batch, -1, 8 * features.shape[-1])
            parts.append(self.decoder.net_weight(features) * WEIGHT_OUTPUT_SCALE)
        if not parts:
            return planes.new_zeros(batch, 0, WEIGHT_CHANNELS)
        return torch.cat(parts, dim=1)

    def vertex_geometry(
        self,
        planes: torch.Tensor,
        vertices: torch.Tensor,
        grid_res: int,
        *,
        chunk: int = DEFAULT_POINTS_CHUNK,
        between_chunks: Callable[[], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid vertices [N, 3] -> sdf [B, N] and normalised deformation [B, N, 3], in chunks."""
        batch = planes.shape[0]
        sdf_parts, deformation_parts = [], []
        for start in range(0, vertices.shape[0], chunk):
            points = vertices[start : start + chunk].unsqueeze(0).expand(batch, -1, -1)
            sdf, deformation = self.geometry(planes, points)
            sdf_parts.append(sdf[..., 0])
            deformation_parts.append(torch.tanh(deformation) / (grid_res * DEFORMATION_MULTIPLIER))
            if between_chunks is not None:
                between_chunks()
        return torch.cat(sdf_parts, dim=1), torch.cat(deformation_parts, dim=1)

    def grid_prediction(
        self, planes: torch.Tensor, vertices: torch.Tensor, cubes: torch.Tensor, grid_res: int, *, chunk: int = DEFAULT_POINTS_CHUNK
    ) -> GridPrediction:
        """sdf and deformation at every grid vertex, weights of every cube (the reference's grid step)."""
        sdf, deformation = self.vertex_geometry(planes, vertices, grid_res, chunk=chunk)
        return GridPrediction(sdf, deformation, self.cube_weights(planes, vertices, cubes, chunk=chunk))
