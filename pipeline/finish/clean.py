"""Cleaning: weld duplicate vertices, drop degenerate faces, remove debris, orient outwards."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclass(frozen=True)
class CleanReport:
    components_kept: int
    components_removed: int
    faces_removed_as_debris: int
    degenerate_faces_removed: int
    components_flipped: int


def face_components(faces: np.ndarray, vertex_count: int) -> np.ndarray:
    """A component label per face; faces sharing a vertex belong together."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(vertex_count,) * 2)
    _, vertex_labels = connected_components(graph, directed=False)
    return vertex_labels[faces[:, 0]]


def remove_debris(mesh: trimesh.Trimesh, debris_fraction: float) -> tuple[trimesh.Trimesh, int, int, int]:
    """Drop components with fewer faces than ``debris_fraction`` of the largest one."""
    labels = face_components(mesh.faces, len(mesh.vertices))
    sizes = np.bincount(labels)
    sizes_present = sizes[sizes > 0]
    keep_component = sizes >= debris_fraction * sizes.max()
    keep_face = keep_component[labels]
    kept = int(keep_component[sizes > 0].sum())
    removed = len(sizes_present) - kept
    if removed:
        mesh.update_faces(keep_face)
        mesh.remove_unreferenced_vertices()
    return mesh, kept, removed, int((~keep_face).sum())


def orient_outwards(mesh: trimesh.Trimesh) -> int:
    """Make winding consistent, then flip every component whose signed volume is negative.

    Marching cubes emits consistent winding, so the costly graph repair runs only when
    the cheap check fails. Volumes are taken about each component's centroid, which keeps
    the sign meaningful for components that are not quite closed.
    """
    if not mesh.is_winding_consistent:
        trimesh.repair.fix_winding(mesh)
    faces = mesh.faces.copy()
    labels = face_components(faces, len(mesh.vertices))
    count = labels.max() + 1
    corners = mesh.vertices[faces]  # [F, 3, 3]
    centroids = np.stack([np.bincount(labels, corners[:, :, axis].mean(1), count) for axis in range(3)], 1)
    centroids /= np.bincount(labels, minlength=count)[:, None]
    local = corners - centroids[labels][:, None, :]
    signed = np.einsum("ij,ij->i", local[:, 0], np.cross(local[:, 1], local[:, 2]))
    inverted = np.bincount(labels, signed, count) < 0
    flip = inverted[labels]
    if flip.any():
        faces[flip] = faces[flip][:, ::-1]
        mesh.faces = faces
    return int(inverted.sum())


def drop_degenerate(mesh: trimesh.Trimesh) -> int:
    before = len(mesh.faces)
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.update_faces(mesh.unique_faces())
    mesh.remove_unreferenced_vertices()
    return before - len(mesh.faces)


def clean_mesh(vertices: np.ndarray, faces: np.ndarray, debris_fraction: float) -> tuple[trimesh.Trimesh, CleanReport]:
    mesh = trimesh.Trimesh(np.asarray(vertices, np.float64), np.asarray(faces, np.int64), process=False)
    mesh.merge_vertices()
    degenerate = drop_degenerate(mesh)
    if len(mesh.faces) == 0:
        return mesh, CleanReport(0, 0, 0, degenerate, 0)
    mesh, kept, removed, debris_faces = remove_debris(mesh, debris_fraction)
    flipped = orient_outwards(mesh)
    return mesh, CleanReport(kept, removed, debris_faces, degenerate, flipped)
