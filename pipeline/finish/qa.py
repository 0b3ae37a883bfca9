"""Quality numbers of the finished model, reported with every job."""

from __future__ import annotations

from typing import Any

import numpy as np
import trimesh

from pipeline.finish.clean import CleanReport


def edge_face_counts(faces: np.ndarray) -> tuple[np.ndarray, bool]:
    """(faces per undirected edge, whether every shared edge is traversed in opposite directions)."""
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).astype(np.int64)
    count = int(faces.max()) + 1
    low, high = directed.min(axis=1), directed.max(axis=1)
    _, inverse, uses = np.unique(low * count + high, return_inverse=True, return_counts=True)
    # Along a consistently wound shared edge one face goes a->b and the other b->a.
    forward = np.bincount(inverse, (directed[:, 0] < directed[:, 1]).astype(np.int64), minlength=len(uses))
    consistent = bool(np.all((uses != 2) | (forward == 1)))
    return uses, consistent


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
