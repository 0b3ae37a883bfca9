"""Order-independent comparison of marching-cubes meshes extracted from the same grid."""

from __future__ import annotations

import numpy as np

from models.golden.compare import TensorCheck


def edge_keys(vertices: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Index-space marching-cubes vertices -> id of the grid edge each lies on.

    Marching cubes makes one vertex per crossing edge, so the edge is a vertex's identity,
    robust where two vertices on neighbouring edges nearly coincide.
    """
    axis = np.abs(vertices - np.round(vertices)).argmax(axis=1)
    lattice = np.round(vertices).astype(np.int64)
    rows = np.arange(len(vertices))
    lattice[rows, axis] = np.floor(vertices[rows, axis]).astype(np.int64)
    return ((axis * shape[0] + lattice[:, 0]) * shape[1] + lattice[:, 1]) * shape[2] + lattice[:, 2]


def canonical_triangles(faces: np.ndarray) -> set[tuple[int, ...]]:
    """Triangles as vertex cycles rotated to start at the smallest id: order-free, winding kept."""
    start = faces.argmin(axis=1)
    rolled = np.stack([faces[np.arange(len(faces)), (start + k) % 3] for k in range(3)], axis=1)
    return set(map(tuple, rolled.tolist()))


def same_mesh_unordered(
    name: str,
    vertices: np.ndarray,
    faces: np.ndarray,
    ref_vertices: np.ndarray,
    ref_faces: np.ndarray,
    *,
    grid_shape: tuple[int, ...],
    atol: float,
) -> TensorCheck:
    """Order-independent equality of two index-space marching-cubes meshes of one grid.

    Equal counts, vertices paired by grid edge and within ``atol`` (index units), and the
    same triangles with the same winding.
    """
    tolerance = f"unordered atol={atol:g} voxel"
    if len(vertices) != len(ref_vertices) or len(faces) != len(ref_faces):
        detail = f"counts {len(vertices)}/{len(faces)} vs {len(ref_vertices)}/{len(ref_faces)}"
        return TensorCheck(name, False, float("inf"), tolerance, detail)
    if len(vertices) == 0:
        return TensorCheck(name, True, 0.0, tolerance)
    keys, ref_keys = edge_keys(vertices, grid_shape), edge_keys(ref_vertices, grid_shape)
    ref_order = np.argsort(ref_keys)
    slot = np.searchsorted(ref_keys[ref_order], keys).clip(0, len(ref_keys) - 1)
    match = ref_order[slot]
    if not np.array_equal(ref_keys[match], keys) or len(np.unique(match)) != len(match):
        return TensorCheck(name, False, float("inf"), tolerance, "vertices lie on different grid edges")
    max_err = float(np.abs(vertices - ref_vertices[match]).max())
    same = canonical_triangles(match[faces]) == canonical_triangles(ref_faces)
    ok = same and max_err <= atol
    return TensorCheck(name, ok, max_err, tolerance, "" if same else "triangles differ")
