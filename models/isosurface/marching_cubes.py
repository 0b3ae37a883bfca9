"""Marching cubes that keeps the grid on its device (torch, vectorised), with PyMCubes as the CPU path.

Both return vertices in index space (a vertex on the edge between grid points i and
i + 1 along an axis sits at i + t), so callers map them to world coordinates the same
way whichever ran. A grid point counts as inside when its value is above the level.

The torch path creates one vertex per grid edge that crosses the level (as PyMCubes
does) and triangulates each cube with PyMCubes' own case table. That table is read
from PyMCubes itself, once, by running it on the 256 sign patterns of a single
cube, so both paths give the same triangles by construction.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
import torch

Backend = Literal["auto", "torch", "pymcubes"]

# Corner n of a cube sits at offset (bit 0, bit 1, bit 2) of n along (i, j, k).
CORNER_OFFSETS = np.array([[(n >> axis) & 1 for axis in range(3)] for n in range(8)], dtype=np.int64)


def _edges() -> tuple[np.ndarray, np.ndarray]:
    """The 12 cube edges as (axis, offset of the lower end) pairs, in a fixed order of our own."""
    axes, offsets = [], []
    for axis in range(3):
        for corner in CORNER_OFFSETS:
            if corner[axis] == 0:
                axes.append(axis)
                offsets.append(corner)
    return np.array(axes), np.stack(offsets)


EDGE_AXIS, EDGE_OFFSET = _edges()
MAX_TRIANGLES_PER_CUBE = 5


@lru_cache(maxsize=1)
def case_table() -> tuple[np.ndarray, np.ndarray]:
    """(triangles [256, 5, 3] local edge ids, -1 padded; triangle count [256]) as PyMCubes triangulates."""
    import mcubes

    edge_of = {(int(a), *map(int, o)): e for e, (a, o) in enumerate(zip(EDGE_AXIS, EDGE_OFFSET))}
    triangles = np.full((256, MAX_TRIANGLES_PER_CUBE, 3), -1, dtype=np.int64)
    counts = np.zeros(256, dtype=np.int64)
    for case in range(256):
        cube = np.full((2, 2, 2), -1.0)
        for n, (i, j, k) in enumerate(CORNER_OFFSETS):
            if case >> n & 1:
                cube[i, j, k] = 1.0
        vertices, faces = mcubes.marching_cubes(cube, 0.0)
        local = []
        for vertex in vertices:
            axis = int(np.argmax(np.abs(vertex - np.round(vertex))))  # the one coordinate at 0.5
            base = np.floor(vertex).astype(np.int64)
            local.append(edge_of[(axis, *map(int, base))])
        counts[case] = len(faces)
        if len(faces):
            triangles[case, : len(faces)] = np.asarray(local)[np.asarray(faces, dtype=np.int64)]
    return triangles, counts


def marching_cubes_pymcubes(volume: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """PyMCubes on the CPU: vertices [N, 3] float64 in index space, faces [F, 3] int64."""
    import mcubes

    vertices, faces = mcubes.marching_cubes(np.ascontiguousarray(volume), float(level))
    return np.asarray(vertices, dtype=np.float64).reshape(-1, 3), np.asarray(faces, dtype=np.int64).reshape(-1, 3)


@torch.no_grad()
def marching_cubes_torch(volume: torch.Tensor, level: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectorised marching cubes on ``volume``'s device.

    volume [X, Y, Z] -> vertices [N, 3] float64 in index space, faces [F, 3] int64, both on the same device.
    """
    if volume.ndim != 3 or min(volume.shape) < 2:
        raise ValueError(f"marching cubes needs a [X, Y, Z] grid with every side >= 2, got {tuple(volume.shape)}")
    device = volume.device
    above = volume > level
    shape = volume.shape

    # One vertex per crossing edge; vertex ids live in one flat index over the three edge families.
    positions, edge_ids = [], []
    next_id = 0
    for axis in range(3):
        lower = above.narrow(axis, 0, shape[axis] - 1)
        upper = above.narrow(axis, 1, shape[axis] - 1)
        crossing = lower != upper
        base = crossing.nonzero()  # row-major, matching boolean-mask assignment below
        step = torch.zeros(3, dtype=torch.long, device=device)
        step[axis] = 1
        v0 = volume[base[:, 0], base[:, 1], base[:, 2]]
        far = base + step
        v1 = volume[far[:, 0], far[:, 1], far[:, 2]]
        t = (level - v0) / (v1 - v0)
        position = base.double()
        position[:, axis] += t.double()
        positions.append(position)
        ids = torch.full(crossing.shape, -1, dtype=torch.int32 if volume.numel() < 2**31 else torch.long, device=device)
        ids[crossing] = torch.arange(next_id, next_id + len(base), dtype=ids.dtype, device=device)
        edge_ids.append(ids)
        next_id += len(base)
    vertices = torch.cat(positions) if positions else torch.zeros(0, 3, dtype=torch.float64, device=device)

    # Case index of every cube from its eight corners.
    cube_shape = tuple(s - 1 for s in shape)
    case = torch.zeros(cube_shape, dtype=torch.int16, device=device)
    for n, (di, dj, dk) in enumerate(CORNER_OFFSETS.tolist()):
        corner = above[di : di + cube_shape[0], dj : dj + cube_shape[1], dk : dk + cube_shape[2]]
        case |= corner.to(torch.int16) << n
    active = (case != 0) & (case != 255)
    cubes = active.nonzero()
    cases = case[active].long()

    table, counts = case_table()
    table_t = torch.as_tensor(table, device=device)
    counts_t = torch.as_tensor(counts, device=device)
    per_cube = counts_t[cases]
    owner = torch.repeat_interleave(torch.arange(len(cubes), device=device), per_cube)
    first = torch.cumsum(per_cube, 0) - per_cube
    slot = torch.arange(len(owner), device=device) - first[owner]
    local_edges = table_t[cases[owner], slot]  # [T, 3] local edge ids

    edge_axis = torch.as_tensor(EDGE_AXIS, device=device)
    edge_offset = torch.as_tensor(EDGE_OFFSET, device=device)
    faces = torch.empty(local_edges.shape, dtype=torch.long, device=device)
    lattice = cubes[owner].unsqueeze(1) + edge_offset[local_edges]  # [T, 3, 3] lower end of each edge
    axes = edge_axis[local_edges]
    for axis in range(3):
        mask = axes == axis
        points = lattice[mask]
        faces[mask] = edge_ids[axis][points[:, 0], points[:, 1], points[:, 2]].long()
    if len(faces) and int(faces.min()) < 0:
        raise RuntimeError("marching cubes referenced an edge without a crossing: case table mismatch")
    return vertices, faces


def marching_cubes(volume: torch.Tensor, level: float, *, backend: Backend = "auto") -> tuple[torch.Tensor, torch.Tensor, str]:
    """Iso-surface of ``volume`` at ``level``: (vertices float64 index space, faces int64, backend used).

    ``auto`` keeps a CUDA grid on the GPU (torch) and hands a CPU grid to PyMCubes, whose
    vertex and face order is the reference's exactly.
    """
    if backend == "auto":
        backend = "torch" if volume.device.type == "cuda" else "pymcubes"
    if backend == "torch":
        vertices, faces = marching_cubes_torch(volume, level)
        return vertices, faces, "torch"
    if backend == "pymcubes":
        vertices, faces = marching_cubes_pymcubes(volume.detach().float().cpu().numpy(), level)
        return torch.from_numpy(vertices), torch.from_numpy(faces), "pymcubes"
    raise ValueError(f"unknown marching-cubes backend {backend!r}")
