"""UV unwrapping with xatlas.

Two ways to cut the surface into charts, both packed by xatlas:

* ``box`` (default): faces are grouped by the axis their (lightly smoothed) normal
  points along, connected groups become charts, and each chart is projected flat along
  its axis. This is a vectorised numpy pass, fast enough for the 2 s finishing budget.
  Such a projection can fold onto itself on rare shapes (a spiral ramp); the bake
  measures overlap and the stage then redoes the layout with ``xatlas``.
* ``xatlas``: xatlas segments and parameterises the surface itself. Lower distortion,
  overlap-free, but tens of seconds for 50k faces on a small CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lift3d.errors import Lift3dError
from pipeline.native_calls import IN_PROCESS, NativeCalls, pack_atlas

ChartMethod = Literal["box", "xatlas"]

# Chart gutter in texels of the final texture; the bake's border rasterisation reaches
# 0.75 texel outwards, so neighbouring charts never write into each other.
PADDING_TEXELS = 2
# xatlas packs on a grid this coarse at most (its packing time grows with the grid);
# the UVs come back normalised, so only the gutter is scaled to match.
MAX_PACK_RESOLUTION = 512
# A face keeps its own axis when the smoothed one would view it this obliquely (cos 75°).
MIN_PROJECTION_COSINE = 0.26
NORMAL_SMOOTHING_ROUNDS = 2


@dataclass(frozen=True)
class UVMesh:
    """Vertices split along chart seams; ``uvs`` are in [0, 1], v grows down the image rows."""

    vertices: np.ndarray  # [V, 3] float64, the input frame
    faces: np.ndarray  # [F, 3] int64
    uvs: np.ndarray  # [V, 2] float32
    source_vertex: np.ndarray  # [V] index of each vertex in the unwrapped mesh
    charts: int
    method: ChartMethod


def _smoothed_face_normals(mesh: trimesh.Trimesh) -> np.ndarray:
    pairs = mesh.face_adjacency
    count = len(mesh.faces)
    rows = np.concatenate([pairs[:, 0], pairs[:, 1], np.arange(count)])
    cols = np.concatenate([pairs[:, 1], pairs[:, 0], np.arange(count)])
    neighbourhood = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(count, count)).tocsr()
    normals = mesh.face_normals
    for _ in range(NORMAL_SMOOTHING_ROUNDS):
        normals = neighbourhood @ normals
    return normals


def box_charts(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """(chart label per face, projection direction 0..5 per face: axis * 2 + (positive))."""
    normals = mesh.face_normals
    smoothed = _smoothed_face_normals(mesh)
    axis = np.abs(smoothed).argmax(axis=1)
    sign = np.take_along_axis(smoothed, axis[:, None], 1)[:, 0] > 0
    facing = np.take_along_axis(normals, axis[:, None], 1)[:, 0] * np.where(sign, 1.0, -1.0)
    oblique = facing < MIN_PROJECTION_COSINE
    own_axis = np.abs(normals).argmax(axis=1)
    axis = np.where(oblique, own_axis, axis)
    sign = np.where(oblique, np.take_along_axis(normals, own_axis[:, None], 1)[:, 0] > 0, sign)
    direction = axis * 2 + sign
    pairs = mesh.face_adjacency
    same = pairs[direction[pairs[:, 0]] == direction[pairs[:, 1]]]
    count = len(mesh.faces)
    graph = coo_matrix((np.ones(len(same), np.int8), (same[:, 0], same[:, 1])), shape=(count, count))
    _, labels = connected_components(graph, directed=False)
    return labels, direction


def _box_projection(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split vertices per chart and project each chart flat: (positions, faces, uvs, source index)."""
    labels, direction = box_charts(mesh)
    charts = int(labels.max()) + 1
    corner_vertex = mesh.faces.reshape(-1).astype(np.int64)
    key = corner_vertex * charts + np.repeat(labels, 3)
    unique_keys, corner_to_split = np.unique(key, return_inverse=True)
    source = unique_keys // charts
    split_direction = np.empty(len(unique_keys), np.int64)
    split_direction[corner_to_split] = np.repeat(direction, 3)
    axis, positive = split_direction // 2, split_direction % 2 == 1
    positions = mesh.vertices[source]
    rows = np.arange(len(source))
    u = positions[rows, (axis + 1) % 3] * np.where(positive, 1.0, -1.0)  # mirror back-facing views
    v = positions[rows, (axis + 2) % 3]
    uvs = np.stack([u, v], axis=1).astype(np.float32)
    return positions.astype(np.float32), corner_to_split.reshape(-1, 3).astype(np.uint32), uvs, source


def _pack_options(texture_size: int) -> tuple[int, int]:
    """xatlas's packing (resolution, padding) for a texture of ``texture_size``."""
    resolution = min(texture_size, MAX_PACK_RESOLUTION)
    return resolution, max(1, math.ceil(PADDING_TEXELS * resolution / texture_size))


def unwrap(mesh: trimesh.Trimesh, texture_size: int, method: ChartMethod = "box", native: NativeCalls = IN_PROCESS) -> UVMesh:
    uvs: np.ndarray | None
    if method == "box":
        positions, faces, uvs, source = _box_projection(mesh)
    elif method == "xatlas":
        source = np.arange(len(mesh.vertices))
        positions, faces, uvs = mesh.vertices.astype(np.float32), mesh.faces.astype(np.uint32), None
    else:
        raise ValueError(f"unknown chart method {method!r}")
    vertex_map, indices, packed_uvs, atlas_count, chart_count = native.call(
        pack_atlas, positions, faces, uvs, *_pack_options(texture_size)
    )
    if atlas_count != 1:
        # With a resolution and no texel density given, xatlas scales the charts to fit one atlas.
        raise Lift3dError(f"xatlas packed the charts into {atlas_count} atlases, not one", code="uv_unwrap_failed")
    source_vertex = source[vertex_map.astype(np.int64)]
    return UVMesh(
        vertices=np.asarray(mesh.vertices).take(source_vertex, axis=0),
        faces=indices.astype(np.int64),
        uvs=packed_uvs.astype(np.float32),
        source_vertex=source_vertex,
        charts=chart_count,
        method=method,
    )
