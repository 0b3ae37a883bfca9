"""Rasterise UV triangles to texels, vectorised in torch (on the GPU when there is one).

Texel (row, col) has its centre at uv = ((col + 0.5) / size, (row + 0.5) / size).
Every texel whose centre lies inside a triangle, or within ``EDGE_REACH`` texels of
it, becomes a hit: border texels are coloured from the nearest point of the
triangle, so bilinear filtering at a chart's edge reads the right colour.

Only chart-border edges reach out; edges shared inside a chart do not, so interior
texels are visited about once. Triangles are walked as row spans (one interval of columns per triangle and row),
so no work is spent on bounding-box texels outside the triangle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EDGE_REACH = 0.75  # texels, across chart borders: about half a texel's diagonal, so partly covered texels count
# Across edges shared inside a chart the neighbour covers the far side; a hair of slack
# only keeps texel centres lying exactly on such an edge.
SHARED_EDGE_REACH = 1e-3
# Work in slices of about this many texels to bound memory.
TEXELS_PER_SLICE = 4_000_000


@dataclass(frozen=True)
class TexelHits:
    """One row per (texel, triangle) hit."""

    texel: torch.Tensor  # [N] int64, row * size + col
    face: torch.Tensor  # [N] int64
    barycentric: torch.Tensor  # [N, 3] float32, clamped onto the triangle
    inside: torch.Tensor  # [N] float32, signed distance (texels) to the nearest edge; >= 0 inside


def _edge_planes(corners: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per face and edge (opposite corner i): distance = a * col + b * row + c, positive
    inside whatever the winding; plus the factor turning a distance into a barycentric."""
    start, end = corners[:, [1, 2, 0]], corners[:, [2, 0, 1]]
    edge = end - start
    length = edge.norm(dim=-1).clamp_min(1e-12)
    doubled_area = edge[:, 0, 0] * edge[:, 1, 1] - edge[:, 0, 1] * edge[:, 1, 0]
    scale = torch.where(doubled_area < 0, -1.0, 1.0).to(corners.dtype)[:, None] / length
    a, b = -edge[..., 1] * scale, edge[..., 0] * scale
    c = -(a * start[..., 0] + b * start[..., 1])
    return a, b, c, length / doubled_area.abs()[:, None]


def _expand(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(owner, rank) for ``counts[i]`` consecutive items per owner i."""
    owner = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    first = torch.cumsum(counts, 0) - counts
    return owner, torch.arange(len(owner), device=counts.device) - first.index_select(0, owner)


def border_edges(faces: torch.Tensor) -> torch.Tensor:
    """[F, 3] bool: edge i (opposite corner i) belongs to this face only, i.e. is a chart border."""
    start, end = faces[:, [1, 2, 0]], faces[:, [2, 0, 1]]
    count = int(faces.max()) + 1 if len(faces) else 1
    keys = (torch.minimum(start, end) * count + torch.maximum(start, end)).reshape(-1)
    _, inverse, uses = torch.unique(keys, return_inverse=True, return_counts=True)
    return (uses[inverse] == 1).reshape(-1, 3)


def _slice_hits(corners: torch.Tensor, reach: torch.Tensor, face_ids: torch.Tensor, size: int) -> TexelHits:
    a, b, c, to_barycentric = _edge_planes(corners)
    low = torch.ceil(corners.amin(dim=1) - EDGE_REACH).clamp(0, size - 1)
    high = torch.floor(corners.amax(dim=1) + EDGE_REACH).clamp(0, size - 1)

    # One span per (face, row): the columns where each edge's distance is >= minus its reach.
    span_face, rank = _expand((high[:, 1] - low[:, 1] + 1).clamp(min=0).long())
    # index_select rather than advanced indexing: the latter is several times slower on CPU.
    row = low[:, 1].index_select(0, span_face) + rank
    sa = a.index_select(0, span_face)
    offset = b.index_select(0, span_face) * row[:, None] + c.index_select(0, span_face) + reach.index_select(0, span_face)
    # Spans outnumber faces several times, so the divisor is made per face; offset / -a
    # rounds exactly like -offset / a.
    bound = offset / (-torch.where(a == 0, 1.0, a)).index_select(0, span_face)
    lower = torch.where(sa > 0, bound, -torch.inf).amax(dim=1)
    upper = torch.where(sa < 0, bound, torch.inf).amin(dim=1)
    blocked = ((sa == 0) & (offset < 0)).any(dim=1)  # an edge parallel to the row, row outside it
    first_col = torch.maximum(torch.ceil(lower), low[:, 0].index_select(0, span_face))
    last_col = torch.minimum(torch.floor(upper), high[:, 0].index_select(0, span_face))
    width = torch.where(blocked, 0.0, (last_col - first_col + 1).clamp(min=0)).long()

    span, rank = _expand(width)
    face = span_face.index_select(0, span)
    col = (first_col.index_select(0, span) + rank).float()
    row = row.index_select(0, span).float()
    distance = a.float().index_select(0, face) * col[:, None] + b.float().index_select(0, face) * row[:, None]
    distance += c.float().index_select(0, face)
    barycentric = (distance * to_barycentric.float().index_select(0, face)).clamp_min(0)
    barycentric /= (barycentric[:, 0:1] + barycentric[:, 1:2] + barycentric[:, 2:3]).clamp_min(1e-12)
    return TexelHits(
        texel=row.long() * size + col.long(),
        face=face_ids.index_select(0, face),
        barycentric=barycentric,
        inside=distance.amin(dim=1),
    )


def rasterise(uvs: torch.Tensor, faces: torch.Tensor, size: int) -> TexelHits:
    """Hits of every face; ``uvs`` [V, 2] in [0, 1] (v down the rows), ``faces`` [F, 3]."""
    corners = uvs.double().index_select(0, faces.reshape(-1)).reshape(-1, 3, 2) * size - 0.5  # texel-centre coordinates, (col, row)
    first, second = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    has_area = (first[:, 0] * second[:, 1] - first[:, 1] * second[:, 0]).abs() > 1e-9
    face_ids = torch.nonzero(has_area)[:, 0]
    corners = corners.index_select(0, face_ids)
    reach = torch.where(border_edges(faces).index_select(0, face_ids), EDGE_REACH, SHARED_EDGE_REACH).double()
    extent = corners.amax(dim=1) - corners.amin(dim=1) + 2 * EDGE_REACH + 1
    boundaries = torch.searchsorted(
        torch.cumsum(extent.prod(dim=1), 0),
        torch.arange(1, 1 + int(extent.prod(dim=1).sum()) // TEXELS_PER_SLICE, device=uvs.device, dtype=torch.float64)
        * TEXELS_PER_SLICE,
    ).tolist()
    parts = [
        _slice_hits(corners[start:stop], reach[start:stop], face_ids[start:stop], size)
        for start, stop in zip([0, *boundaries], [*boundaries, len(face_ids)])
        if stop > start
    ]
    if not parts:
        empty = torch.zeros(0, dtype=torch.long, device=uvs.device)
        return TexelHits(empty, empty, torch.zeros(0, 3, device=uvs.device), torch.zeros(0, device=uvs.device))
    if len(parts) == 1:
        return parts[0]
    return TexelHits(*(torch.cat([getattr(p, name) for p in parts]) for name in ("texel", "face", "barycentric", "inside")))
