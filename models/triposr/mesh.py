"""Scene code -> coloured mesh: density grid, marching cubes at a density threshold, colours at the vertices.

The reference's conventions: the grid spans the cube [-radius, radius]^3 corner to
corner in R samples per axis, the surface is where the activated density equals the
threshold (25 by default, inside is denser), vertex colours are the field's colour at
each vertex.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from lift3d.errors import EmptyReconstruction
from models.isosurface.marching_cubes import Backend, marching_cubes
from models.triposr.field import DEFAULT_POINTS_CHUNK, TriplaneNeRFField


@dataclass
class TriplaneMesh:
    vertices: np.ndarray  # [N, 3] float32, world coordinates (z-up, the cube of the model's radius)
    faces: np.ndarray  # [F, 3] int64
    vertex_colors: np.ndarray  # [N, 3] float32 in [0, 1]
    backend: str  # which marching cubes ran


def extract_mesh(
    field: TriplaneNeRFField,
    scene_code: torch.Tensor,
    *,
    resolution: int,
    threshold: float,
    chunk: int = DEFAULT_POINTS_CHUNK,
    backend: Backend = "auto",
    between_chunks: Callable[[], None] | None = None,
) -> TriplaneMesh:
    """One scene code [3, C, H, W] -> its iso-surface; raises ``EmptyReconstruction`` when there is none."""
    if scene_code.ndim != 4:
        raise ValueError(f"one scene code [3, C, H, W] expected, got {tuple(scene_code.shape)}")
    codes = scene_code[None]
    grid = field.density_grid(codes, resolution, chunk=chunk, between_chunks=between_chunks)[0]
    index_vertices, faces, used = marching_cubes(grid, threshold, backend=backend)
    del grid
    if len(faces) == 0:
        raise EmptyReconstruction(
            f"the density field has no surface at threshold {threshold:g} (grid {resolution}^3): "
            "the image shows no object the model recognises"
        )
    world = field.grid_to_world(index_vertices.to(codes.device), resolution).float()
    colors = field.rgb(codes, world[None], chunk=chunk)[0]
    return TriplaneMesh(
        vertices=world.cpu().numpy(),
        faces=faces.cpu().numpy().astype(np.int64),
        vertex_colors=colors.float().cpu().numpy(),
        backend=used,
    )
