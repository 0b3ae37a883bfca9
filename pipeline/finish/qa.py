"""Quality numbers of the finished model, reported with every job."""

from __future__ import annotations

from typing import Any

import numpy as np
import trimesh

from pipeline.finish.clean import CleanReport


def edge_face_counts(faces: np.ndarray) -> tuple[np.ndarray, bool]:
    """(faces per undirected edge, whether every shared edge is traversed in opposite directions)."""
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    undirected = np.sort(directed, axis=1)
    _, inverse, counts = np.unique(undirected, axis=0, return_inverse=True, return_counts=True)
    # Along a consistently wound shared edge one face goes a->b and the other b->a.
    forward = (directed[:, 0] < directed[:, 1]).astype(np.int64)
    forward_per_edge = np.bincount(inverse.reshape(-1), forward, minlength=len(counts))
    consistent = bool(np.all((counts != 2) | (forward_per_edge == 1)))
    return counts, consistent


def mesh_qa(mesh: trimesh.Trimesh, clean: CleanReport, bounds: np.ndarray) -> dict[str, Any]:
    """Stats of the welded mesh (before UV seams split vertices)."""
    counts, consistent = edge_face_counts(mesh.faces)
    return {
        "vertices": int(len(mesh.vertices)),
        "faces": int(len(mesh.faces)),
        "components_kept": clean.components_kept,
        "components_removed": clean.components_removed,
        "degenerate_faces_removed": clean.degenerate_faces_removed,
        "watertight": bool(consistent and np.all(counts == 2)),
        "manifold": bool(consistent and np.all(counts <= 2)),
        "bounding_box": {"min": [round(float(x), 6) for x in bounds[0]], "max": [round(float(x), 6) for x in bounds[1]]},
    }
