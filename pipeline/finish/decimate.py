"""Decimation to a face budget with fast-simplification (quadric edge collapse)."""

from __future__ import annotations

import numpy as np
import trimesh

from pipeline.finish.clean import drop_unreferenced, nondegenerate
from pipeline.native_calls import IN_PROCESS, NativeCalls, simplify


def decimate(mesh: trimesh.Trimesh, target_faces: int, native: NativeCalls = IN_PROCESS) -> trimesh.Trimesh:
    """Collapse edges down to ``target_faces``; 0, or a mesh already under budget, keeps every face.

    It runs before UV unwrapping because collapses would destroy the UV layout.
    """
    if target_faces <= 0 or len(mesh.faces) <= target_faces:
        return mesh
    vertices, faces = native.call(simplify, np.asarray(mesh.vertices), np.asarray(mesh.faces), target_faces)
    # Collapses can leave zero-area slivers and orphaned vertices behind.
    faces = np.asarray(faces, np.int64)
    vertices, faces = drop_unreferenced(np.asarray(vertices, np.float64), faces[nondegenerate(vertices, faces)])
    return trimesh.Trimesh(vertices, faces, process=False)
