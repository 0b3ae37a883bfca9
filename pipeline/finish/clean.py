"""Cleaning: weld duplicate vertices, drop degenerate faces, remove debris, orient outwards.

Plain numpy on 1-D integer keys (one sort each): a 300k-face mesh cleans in a fraction
of a second, several times faster than the equivalent trimesh calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# Vertices closer than this fraction of the bounding box's largest side are one vertex.
WELD_TOLERANCE = 2.0**-20
# Faces whose doubled area is below this fraction of the squared largest side are degenerate.
DEGENERATE_AREA = 1e-14


@dataclass(frozen=True)
class CleanReport:
    components_kept: int
    components_removed: int
    faces_removed_as_debris: int
    degenerate_faces_removed: int
    components_flipped: int


def weld_vertices(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices that quantise to the same point on a 2^20 grid over the bounding box."""
    low = vertices.min(axis=0)
    extent = float((vertices.max(axis=0) - low).max()) or 1.0
    cells = np.round((vertices - low) / (extent * WELD_TOLERANCE)).astype(np.int64)
    keys = (cells[:, 0] << 42) | (cells[:, 1] << 21) | cells[:, 2]
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    # ndarray.take gathers rows several times faster than fancy indexing.
    return vertices[first], inverse.reshape(-1).take(faces)


def face_keys(faces: np.ndarray, vertex_count: int) -> np.ndarray:
    """One int64 per face, equal for faces with the same vertex set whatever their order."""
    # min / middle / max by elementwise ops: several times faster than np.sort on rows of three.
    a, b, c = (faces[:, i].astype(np.int64) for i in range(3))
    low, high = np.minimum(np.minimum(a, b), c), np.maximum(np.maximum(a, b), c)
    middle = a + b + c - low - high
    return (low * vertex_count + middle) * vertex_count + high


def _doubled_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    corners = vertices.take(faces, axis=0)  # one gather for all three corners
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    u, v = b - a, c - a
    x = u[:, 1] * v[:, 2] - u[:, 2] * v[:, 1]
    y = u[:, 2] * v[:, 0] - u[:, 0] * v[:, 2]
    z = u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]
    x *= x
    x += y * y
    x += z * z
    return np.sqrt(x, out=x)


def nondegenerate(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Mask of faces with three distinct vertices, some area, and not repeating an earlier face."""
    distinct = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    extent = float(np.ptp(vertices, axis=0).max()) if len(vertices) else 1.0
    keep = distinct & (_doubled_areas(vertices, faces) > DEGENERATE_AREA * extent * extent)
    if len(vertices) < 2**21:
        _, first = np.unique(face_keys(faces, len(vertices)), return_index=True)
        unique = np.zeros(len(faces), bool)
        unique[first] = True
        keep &= unique
    return keep


def drop_unreferenced(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    used = np.zeros(len(vertices), bool)
    used[faces] = True
    new_index = np.cumsum(used) - 1
    return vertices[used], new_index.take(faces)


def face_components(faces: np.ndarray, vertex_count: int) -> np.ndarray:
    """A component label per face; faces sharing a vertex belong together."""
    starts, ends = np.concatenate([faces[:, 0], faces[:, 1]]), np.concatenate([faces[:, 1], faces[:, 2]])
    graph = coo_matrix((np.ones(len(starts), np.int8), (starts, ends)), shape=(vertex_count,) * 2)
    _, vertex_labels = connected_components(graph, directed=False)
    return vertex_labels[faces[:, 0]]


def winding_is_consistent(faces: np.ndarray, vertex_count: int) -> bool:
    """Consistent winding traverses every directed edge at most once."""
    a, b, c = (faces[:, i].astype(np.int64) for i in range(3))
    keys = np.concatenate([a * vertex_count + b, b * vertex_count + c, c * vertex_count + a])
    keys.sort()
    return not bool(np.any(keys[1:] == keys[:-1]))


def outward_flips(vertices: np.ndarray, faces: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per component: True where its signed volume is negative (it faces inwards).

    Volumes are taken about each component's centroid, which keeps the sign
    meaningful for components that are not quite closed.
    """
    count = int(labels.max()) + 1
    vertex_labels = np.zeros(len(vertices), np.int64)
    vertex_labels[faces[:, 0]] = labels
    vertex_labels[faces[:, 1]] = labels
    vertex_labels[faces[:, 2]] = labels
    sizes = np.bincount(vertex_labels, minlength=count)[:, None]
    centroids = np.stack([np.bincount(vertex_labels, vertices[:, axis], count) for axis in range(3)], 1) / sizes
    local = vertices - centroids.take(vertex_labels, axis=0)
    corners = local.take(faces, axis=0)
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    signed = (
        a[:, 0] * (b[:, 1] * c[:, 2] - b[:, 2] * c[:, 1])
        + a[:, 1] * (b[:, 2] * c[:, 0] - b[:, 0] * c[:, 2])
        + a[:, 2] * (b[:, 0] * c[:, 1] - b[:, 1] * c[:, 0])
    )
    return np.bincount(labels, signed, count) < 0


def clean_mesh(vertices: np.ndarray, faces: np.ndarray, debris_fraction: float) -> tuple[trimesh.Trimesh, CleanReport]:
    vertices = np.asarray(vertices, np.float64)
    faces = np.asarray(faces, np.int64)
    if len(faces) == 0:
        return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64), process=False), CleanReport(0, 0, 0, 0, 0)
    vertices, faces = weld_vertices(vertices, faces)
    keep = nondegenerate(vertices, faces)
    degenerate = int((~keep).sum())
    vertices, faces = drop_unreferenced(vertices, faces[keep])
    if len(faces) == 0:
        return trimesh.Trimesh(vertices, faces, process=False), CleanReport(0, 0, 0, degenerate, 0)

    labels = face_components(faces, len(vertices))
    sizes = np.bincount(labels)
    present = sizes > 0
    keep_component = sizes >= debris_fraction * sizes.max()
    keep_face = keep_component[labels]
    kept, removed = int(keep_component[present].sum()), int((present & ~keep_component).sum())
    if removed:
        vertices, faces = drop_unreferenced(vertices, faces[keep_face])
        labels = face_components(faces, len(vertices))

    mesh = trimesh.Trimesh(vertices, faces, process=False)
    if not winding_is_consistent(faces, len(vertices)):
        # Marching cubes winds consistently; only odd inputs pay for trimesh's graph repair.
        trimesh.repair.fix_winding(mesh)
        faces = mesh.faces.copy()
    inverted = outward_flips(vertices, faces, labels)
    flip = inverted[labels]
    if flip.any():
        faces[flip] = faces[flip][:, ::-1]
        mesh = trimesh.Trimesh(vertices, faces, process=False)
    report = CleanReport(kept, removed, int((~keep_face).sum()), degenerate, int(inverted.sum()))
    return mesh, report
