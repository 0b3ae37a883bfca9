"""Texture bake: colour every covered texel from the field at its 3D point, then pad the charts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import distance_transform_cdt

from pipeline.finish.raster import rasterise
from pipeline.state import ColorQuery

# Texels counted as overlapping must be this far inside two triangles (texels), so a
# centre lying on an edge the two triangles share is never mistaken for an overlap.
STRICTLY_INSIDE = 1e-3
QUERY_CHUNK = 1 << 20


@dataclass(frozen=True)
class BakedTexture:
    image: np.ndarray  # [size, size, 3] uint8, sRGB; row r holds v = (r + 0.5) / size
    covered: np.ndarray  # [size, size] bool, texels some triangle reaches
    overlap_fraction: float  # share of covered texels strictly inside two or more triangles


def _best_hit_per_texel(texel: torch.Tensor, inside: torch.Tensor, texel_count: int) -> torch.Tensor:
    """Index of one hit per texel, preferring the triangle the texel is most inside of."""
    score = inside.clamp(max=0)  # every inside hit is equally good
    best = torch.full((texel_count,), -torch.inf, device=texel.device)
    best = best.scatter_reduce(0, texel, score, reduce="amax")
    candidates = torch.nonzero(score >= best.index_select(0, texel))[:, 0]
    # Several equally good hits (a texel on an edge two triangles share): keep the first.
    chosen = torch.full((texel_count,), len(texel), dtype=torch.long, device=texel.device)
    chosen = chosen.scatter_reduce(0, texel.index_select(0, candidates), candidates, reduce="amin")
    return chosen[chosen < len(texel)]


def query_colours(color_query: ColorQuery, points: np.ndarray) -> np.ndarray:
    parts = [color_query(points[start : start + QUERY_CHUNK]) for start in range(0, len(points), QUERY_CHUNK)]
    colours = np.concatenate(parts) if parts else np.zeros((0, 3), np.float32)
    return np.clip(np.asarray(colours, np.float32), 0.0, 1.0)


def fill_outside_charts(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Give every uncovered texel the colour of the nearest covered one.

    This pads chart borders (bilinear filtering and mipmaps then never blend in a
    background colour, so no seams show) and fills the empty atlas space in one pass.
    """
    if covered.all() or not covered.any():
        return image
    # Chessboard distance: nearest enough for padding, and twice as fast as Euclidean.
    _, (rows, cols) = distance_transform_cdt(~covered, metric="chessboard", return_indices=True)
    size = image.shape[1]
    # A flat take gathers the texels about twice as fast as indexing by (rows, cols).
    nearest = (rows * size + cols).reshape(-1)  # int32 is enough below 46341² texels
    return image.reshape(-1, image.shape[2]).take(nearest, axis=0).reshape(image.shape)


def bake_texture(
    positions: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray,
    color_query: ColorQuery,
    size: int,
    device: torch.device | str = "cpu",
) -> BakedTexture:
    """``positions`` are in the colour field's frame (the reconstruction frame)."""
    device = torch.device(device)
    faces_t = torch.as_tensor(faces, dtype=torch.long, device=device)
    hits = rasterise(torch.as_tensor(uvs, device=device), faces_t, size)
    texel_count = size * size

    chosen = _best_hit_per_texel(hits.texel, hits.inside, texel_count)  # one per covered texel
    strictly_inside = torch.bincount(hits.texel[hits.inside > STRICTLY_INSIDE], minlength=texel_count)
    overlap = int((strictly_inside > 1).sum()) / max(len(chosen), 1)

    vertices = torch.as_tensor(positions, dtype=torch.float32, device=device)
    # Each face's three corners side by side, so a texel needs one 9-float gather, not four.
    face_corners = vertices.index_select(0, faces_t.reshape(-1)).view(-1, 9)
    corners = face_corners.index_select(0, hits.face.index_select(0, chosen))
    barycentric = hits.barycentric.index_select(0, chosen)
    points = barycentric[:, 0:1] * corners[:, 0:3]
    points += barycentric[:, 1:2] * corners[:, 3:6]
    points += barycentric[:, 2:3] * corners[:, 6:9]
    colours = query_colours(color_query, points.cpu().numpy())

    texels = hits.texel.index_select(0, chosen).cpu().numpy()
    image = np.zeros((texel_count, 3), np.uint8)
    image[texels] = np.round(colours * 255).astype(np.uint8)
    covered = np.zeros(texel_count, bool)
    covered[texels] = True
    image, covered = image.reshape(size, size, 3), covered.reshape(size, size)
    return BakedTexture(image=fill_outside_charts(image, covered), covered=covered, overlap_fraction=overlap)
