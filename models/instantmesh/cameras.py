"""Zero123++ v1.2's fixed six input cameras, encoded as the reconstruction model expects.

World frame: +z up, cameras on a sphere looking at the origin. Each view is encoded
with 16 values: the top three rows of the OpenGL camera-to-world matrix (row-major),
then fx, fy, cx, cy normalised by the image size.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

AZIMUTHS_DEG = (30.0, 90.0, 150.0, 210.0, 270.0, 330.0)
ELEVATIONS_DEG = (20.0, -10.0, 20.0, -10.0, 20.0, -10.0)
FOV_DEG = 30.0
RADIUS = 4.0
# run.py's 4-view mode keeps these views (of both the images and the cameras).
FOUR_VIEW_SUBSET = (0, 2, 4, 5)


def view_indices(views: int) -> tuple[int, ...]:
    if views == 6:
        return tuple(range(6))
    if views == 4:
        return FOUR_VIEW_SUBSET
    raise ValueError(f"the reconstruction model takes 6 views or the 4-view subset, not {views}")


def camera_positions(radius: float = RADIUS) -> torch.Tensor:
    """[6, 3] float32 positions; computed in float64 then cast, as the reference does."""
    azimuths = np.deg2rad(np.array(AZIMUTHS_DEG))
    elevations = np.deg2rad(np.array(ELEVATIONS_DEG))
    xyz = np.stack(
        [
            radius * np.cos(elevations) * np.cos(azimuths),
            radius * np.cos(elevations) * np.sin(azimuths),
            radius * np.sin(elevations),
        ],
        axis=-1,
    )
    return torch.from_numpy(xyz).float()


def look_at_origin(positions: torch.Tensor) -> torch.Tensor:
    """Camera-to-world [N, 4, 4] (OpenGL: the camera looks along its -z) with world up +z, in float32."""
    up = torch.tensor([0.0, 0.0, 1.0]).expand_as(positions)
    z_axis = F.normalize(positions, dim=-1)
    x_axis = F.normalize(torch.linalg.cross(up, z_axis, dim=-1), dim=-1)
    y_axis = F.normalize(torch.linalg.cross(z_axis, x_axis, dim=-1), dim=-1)
    top = torch.stack([x_axis, y_axis, z_axis, positions], dim=-1)  # columns x, y, z, position
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(len(positions), 1, 4)
    return torch.cat([top, bottom], dim=1)


def normalized_intrinsics(fov_deg: float = FOV_DEG) -> tuple[float, float, float, float]:
    focal = 0.5 / math.tan(math.radians(fov_deg) * 0.5)
    return focal, focal, 0.5, 0.5


def zero123plus_cameras(batch: int = 1, *, radius: float = RADIUS, fov_deg: float = FOV_DEG, views: int = 6) -> torch.Tensor:
    """[batch, views, 16] float32 camera encoding, identical for every batch item."""
    c2w = look_at_origin(camera_positions(radius))
    extrinsics = c2w[:, :3, :].reshape(6, 12)
    intrinsics = torch.tensor(normalized_intrinsics(fov_deg), dtype=torch.float32).expand(6, 4)
    cameras = torch.cat([extrinsics, intrinsics], dim=-1)[list(view_indices(views))]
    return cameras.unsqueeze(0).repeat(batch, 1, 1)


def view_poses(views: int = 6, *, radius: float = RADIUS, fov_deg: float = FOV_DEG) -> list[dict[str, float]]:
    """Human-readable poses of the views in use (degrees), in view order."""
    return [
        {"azimuth_deg": AZIMUTHS_DEG[i], "elevation_deg": ELEVATIONS_DEG[i], "radius": radius, "fov_deg": fov_deg}
        for i in view_indices(views)
    ]
