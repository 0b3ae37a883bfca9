"""NeRF renders of scene codes from cameras on a circle around the object (previews and golden checks).

World is z-up. View k sits at azimuth 360 k / n degrees (from +x towards +y) and the
given elevation and distance, looking at the origin. Samples are spaced evenly between
the ray's entry and exit of the cube (shrunk by 1e-3), and each sample's opacity uses the
step of the normalised ray parameter, 1/S, not the metric spacing: that is the
reference's convention and what the model was trained with. Background is white.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models.triposr.field import TriplaneNeRFField

RAY_CHUNK = 1 << 14
BOX_SHRINK = 1.0 - 1.0e-3
MIN_DIRECTION = 1e-6
MIN_SEGMENT = 0.01
TRANSMITTANCE_EPS = 1e-10


def spherical_cameras(
    n_views: int, elevation_deg: float, camera_distance: float, fovy_deg: float, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ray origins and unit directions, each [V, H, W, 3]."""
    azimuth = torch.linspace(0.0, 360.0, n_views + 1)[:n_views] * math.pi / 180
    elevation = torch.full_like(azimuth, elevation_deg * math.pi / 180)
    position = camera_distance * torch.stack(
        [torch.cos(elevation) * torch.cos(azimuth), torch.cos(elevation) * torch.sin(azimuth), torch.sin(elevation)], dim=-1
    )
    lookat = F.normalize(-position, dim=-1)
    world_up = torch.tensor([0.0, 0.0, 1.0]).expand_as(lookat)
    right = F.normalize(torch.linalg.cross(lookat, world_up, dim=-1), dim=-1)
    up = F.normalize(torch.linalg.cross(right, lookat, dim=-1), dim=-1)
    rotation = torch.stack([right, up, -lookat], dim=-1)  # camera-to-world, columns are the camera axes

    focal = 0.5 * height / math.tan(0.5 * fovy_deg * math.pi / 180)
    u = (torch.arange(width, dtype=torch.float32) + 0.5 - width / 2) / focal
    v = (torch.arange(height, dtype=torch.float32) + 0.5 - height / 2) / focal
    rows, cols = torch.meshgrid(v, u, indexing="ij")
    camera_dirs = torch.stack([cols, -rows, -torch.ones_like(cols)], dim=-1)  # [H, W, 3]
    directions = F.normalize(torch.einsum("vij,hwj->vhwi", rotation, camera_dirs), dim=-1)
    origins = position[:, None, None, :].expand_as(directions)
    return origins, directions


def ray_box_segments(
    origins: torch.Tensor, directions: torch.Tensor, radius: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entry and exit parameters [N] of rays [N, 3] through the cube, and which rays cross it at all."""
    safe = torch.where(directions.abs() < MIN_DIRECTION, torch.full_like(directions, MIN_DIRECTION), directions)
    bound = BOX_SHRINK * radius
    t_upper = (bound - origins) / safe
    t_lower = (-bound - origins) / safe
    near = torch.minimum(t_upper, t_lower).amax(dim=-1).clamp_min(0.0)
    far = torch.maximum(t_upper, t_lower).amin(dim=-1)
    valid = far - near > MIN_SEGMENT
    return near, far, valid


def composite(density: torch.Tensor, rgb: torch.Tensor, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """density [N, S], rgb [N, S, 3], step [S] -> colour [N, 3] and opacity [N] (emission-absorption)."""
    alpha = 1 - torch.exp(-step * density)
    transmittance = torch.cumprod(1 - alpha[:, :-1] + TRANSMITTANCE_EPS, dim=-1)
    transmittance = torch.cat([torch.ones_like(alpha[:, :1]), transmittance], dim=-1)
    weights = alpha * transmittance
    return (weights[..., None] * rgb).sum(dim=-2), weights.sum(dim=-1)


def render_rays(
    field: TriplaneNeRFField, scene_code: torch.Tensor, origins: torch.Tensor, directions: torch.Tensor, samples: int
) -> torch.Tensor:
    """One scene code [3, C, H, W] and rays [N, 3] -> colours [N, 3] over white."""
    near, far, valid = ray_box_segments(origins, directions, field.radius)
    t = torch.linspace(0.0, 1.0, samples + 1, device=origins.device)
    t_mid = (t[:-1] + t[1:]) / 2
    step = t[1:] - t[:-1]
    colour = torch.zeros_like(origins)
    opacity = torch.zeros_like(origins[:, 0])
    index = valid.nonzero().squeeze(-1)
    for start in range(0, len(index), RAY_CHUNK):
        rays = index[start : start + RAY_CHUNK]
        depth = near[rays, None] * (1 - t_mid) + far[rays, None] * t_mid  # [n, S]
        points = origins[rays, None, :] + depth[..., None] * directions[rays, None, :]
        sample = field.query(scene_code[None], points.reshape(1, -1, 3))
        density = sample.density[0, :, 0].view(len(rays), samples)
        rgb = sample.rgb[0].view(len(rays), samples, 3)
        colour[rays], opacity[rays] = composite(density, rgb, step)
    return colour + (1 - opacity[:, None])


def render_views(
    field: TriplaneNeRFField,
    scene_codes: torch.Tensor,
    *,
    n_views: int,
    samples: int,
    elevation_deg: float = 0.0,
    camera_distance: float = 1.9,
    fovy_deg: float = 40.0,
    height: int = 256,
    width: int = 256,
) -> torch.Tensor:
    """Scene codes [B, 3, C, H, W] -> renders [B, V, height, width, 3] in [0, 1]."""
    origins, directions = spherical_cameras(n_views, elevation_deg, camera_distance, fovy_deg, height, width)
    device = scene_codes.device
    origins, directions = origins.reshape(-1, 3).to(device), directions.reshape(-1, 3).to(device)
    images = [render_rays(field, code, origins, directions, samples) for code in scene_codes]
    return torch.stack(images).view(len(scene_codes), n_views, height, width, 3)
