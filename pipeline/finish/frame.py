"""From the reconstruction frame to glTF's frame and units.

The reconstruction frame is InstantMesh's world: +z up, the input photo's camera on
+x looking at the origin, its right-hand direction +y. glTF wants +Y up, the input
view's front facing +Z, metres. So glTF (X, Y, Z) = (y_r, z_r, x_r): a cyclic
permutation of the axes, a proper rotation (det +1), never a mirror. docs/frame.md
has the derivation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Rows map reconstruction (x_r, y_r, z_r) to glTF (X, Y, Z): gltf = RECON_TO_GLTF @ p.
RECON_TO_GLTF = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


@dataclass(frozen=True)
class FrameTransform:
    """gltf = scale * (RECON_TO_GLTF @ p) + offset: rotation, uniform scale, then translation."""

    scale: float
    offset: np.ndarray  # [3], in glTF metres

    def to_gltf(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, np.float64) @ RECON_TO_GLTF.T) * self.scale + self.offset

    def to_reconstruction(self, points: np.ndarray) -> np.ndarray:
        return ((np.asarray(points, np.float64) - self.offset) / self.scale) @ RECON_TO_GLTF

    def rotate_directions(self, directions: np.ndarray) -> np.ndarray:
        """Normals and other directions only rotate (the scale is uniform and positive)."""
        return np.asarray(directions, np.float64) @ RECON_TO_GLTF.T


def fit_frame(vertices: np.ndarray, largest_extent: float) -> FrameTransform:
    """The transform that centres the model on X/Z, rests it on Y = 0 and sizes its largest extent."""
    if largest_extent <= 0:
        raise ValueError(f"largest_extent must be positive, got {largest_extent}")
    rotated = np.asarray(vertices, np.float64) @ RECON_TO_GLTF.T
    low, high = rotated.min(axis=0), rotated.max(axis=0)
    extent = float((high - low).max())
    scale = largest_extent / extent if extent > 0 else 1.0
    anchor = np.array([(low[0] + high[0]) / 2, low[1], (low[2] + high[2]) / 2])
    return FrameTransform(scale=scale, offset=-anchor * scale)
