"""Triplane sampling and regular-grid evaluation, shared by the triplane NeRF models.

Models differ in which world axes each plane spans and in how world points map to the
planes' [-1, 1] range; both are arguments here, the sampling rule is common:
``grid_sample`` bilinear, ``align_corners=False`` (-1 and 1 are the outer edges of the
border texels), zeros outside.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

PlaneAxes = Sequence[tuple[int, int]]


def sample_triplanes(planes: torch.Tensor, points: torch.Tensor, axes: PlaneAxes) -> torch.Tensor:
    """planes [B, 3, C, H, W], points [B, P, 3] in plane units -> features [B, P, 3C] in plane order.

    ``axes[n]`` names the two point coordinates plane n is sampled at: the first runs along
    the plane's width (columns), the second along its height (rows).
    """
    batch, num_planes, channels, height, width = planes.shape
    uv = torch.stack([points[..., list(pair)] for pair in axes], dim=1)  # [B, 3, P, 2]
    grid = uv.reshape(batch * num_planes, 1, -1, 2).to(planes.dtype)
    sampled = F.grid_sample(
        planes.reshape(batch * num_planes, channels, height, width),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # [B*3, C, 1, P]
    sampled = sampled.view(batch, num_planes, channels, -1).permute(0, 3, 1, 2)
    return sampled.reshape(batch, -1, num_planes * channels)


def evaluate_on_grid(
    values_at: Callable[[torch.Tensor], torch.Tensor],
    axis: torch.Tensor,
    batch: int,
    *,
    chunk: int,
    between_chunks: Callable[[], None] | None = None,
) -> torch.Tensor:
    """``values_at(points [B, P, 3]) -> [B, P]`` on the grid ``axis`` x ``axis`` x ``axis`` -> [B, R, R, R] float32.

    Element [i, j, k] is at (axis[i], axis[j], axis[k]) (ij indexing). Built a slab of the
    first axis at a time, so only about ``chunk`` points are in flight whatever R is.
    """
    resolution = len(axis)
    grid = torch.empty(batch, resolution, resolution, resolution, device=axis.device, dtype=torch.float32)
    slab = max(1, chunk // (resolution * resolution))
    for start in range(0, resolution, slab):
        xs = axis[start : start + slab]
        points = torch.stack(torch.meshgrid(xs, axis, axis, indexing="ij"), dim=-1).reshape(1, -1, 3)
        values = values_at(points.expand(batch, -1, -1))
        grid[:, start : start + len(xs)] = values.view(batch, len(xs), resolution, resolution).float()
        if between_chunks is not None:
            between_chunks()
    return grid
