"""Analytic meshes and colour fields for the finishing tests (reconstruction frame, sRGB colours)."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import mcubes
import numpy as np
import pygltflib
import trimesh
from PIL import Image


def marching_cubes(field: np.ndarray, extent: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Surface of ``field > 0`` sampled on [-extent, extent]^3."""
    vertices, faces = mcubes.marching_cubes(field, 0.0)
    resolution = field.shape[0]
    vertices = vertices / (resolution - 1) * 2 * extent - extent
    return vertices.astype(np.float32), faces.astype(np.int64)


def grid(resolution: int, extent: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axis = np.linspace(-extent, extent, resolution, dtype=np.float32)
    return np.meshgrid(axis, axis, axis, indexing="ij")


def sphere(resolution: int = 64, radius: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    x, y, z = grid(resolution)
    return marching_cubes(radius - np.sqrt(x * x + y * y + z * z))


def torus(resolution: int = 72, major: float = 0.55, minor: float = 0.22) -> tuple[np.ndarray, np.ndarray]:
    x, y, z = grid(resolution)
    ring = np.sqrt(x * x + y * y) - major
    return marching_cubes(minor - np.sqrt(ring * ring + z * z))


def box(extents: tuple[float, float, float] = (1.2, 0.8, 0.6)) -> tuple[np.ndarray, np.ndarray]:
    mesh = trimesh.creation.box(extents=extents)
    return mesh.vertices.astype(np.float32), mesh.faces.astype(np.int64)


def gradient_colours(points: np.ndarray) -> np.ndarray:
    return np.clip(0.5 + 0.4 * points, 0.0, 1.0).astype(np.float32)


def torus_colours(points: np.ndarray) -> np.ndarray:
    angle = np.arctan2(points[:, 1], points[:, 0])
    return np.clip(np.stack([0.5 + 0.4 * np.cos(angle), 0.5 + 0.4 * np.sin(angle), 0.5 + points[:, 2]], 1), 0, 1).astype(np.float32)


BOX_COLOURS = np.array([[0.85, 0.15, 0.1], [0.1, 0.7, 0.2], [0.15, 0.25, 0.9]], np.float32)


def box_colours_for(extents: tuple[float, float, float]):  # noqa: ANN201
    """Three colours, one per pair of opposite box faces (by the axis a point is nearest a face of)."""
    half = np.asarray(extents, np.float32) / 2

    def query(points: np.ndarray) -> np.ndarray:
        return BOX_COLOURS[np.abs(points / half).argmax(axis=1)]

    return query


def constant_colour(value: float):  # noqa: ANN201
    return lambda points: np.full((len(points), 3), value, np.float32)


@dataclass
class GlbContents:
    gltf: pygltflib.GLTF2
    positions: np.ndarray
    normals: np.ndarray | None
    uvs: np.ndarray | None
    colors: np.ndarray | None
    indices: np.ndarray
    texture: np.ndarray | None  # [H, W, 3] uint8 as stored


def _accessor(gltf: pygltflib.GLTF2, index: int) -> np.ndarray:
    """Read an accessor straight from the binary chunk (independent of trimesh)."""
    accessor = gltf.accessors[index]
    view = gltf.bufferViews[accessor.bufferView]
    dtype = {5126: "<f4", 5125: "<u4", 5123: "<u2", 5121: "u1"}[accessor.componentType]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[accessor.type]
    start = (view.byteOffset or 0) + (accessor.byteOffset or 0)
    data = np.frombuffer(gltf.binary_blob(), dtype=dtype, count=accessor.count * width, offset=start)
    return data.reshape(accessor.count, width) if width > 1 else data


def read_glb(data: bytes) -> GlbContents:
    assert data[:4] == b"glTF" and struct.unpack_from("<I", data, 8)[0] == len(data)
    gltf = pygltflib.GLTF2.load_from_bytes(data)
    assert len(gltf.meshes) == 1 and len(gltf.meshes[0].primitives) == 1
    primitive = gltf.meshes[0].primitives[0]
    attributes = primitive.attributes

    def optional(index: int | None) -> np.ndarray | None:
        return None if index is None else _accessor(gltf, index)

    texture = None
    if gltf.images:
        image = gltf.images[0]
        view = gltf.bufferViews[image.bufferView]
        png = gltf.binary_blob()[view.byteOffset or 0 : (view.byteOffset or 0) + view.byteLength]
        texture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return GlbContents(
        gltf=gltf,
        positions=_accessor(gltf, attributes.POSITION).astype(np.float64),
        normals=optional(attributes.NORMAL),
        uvs=optional(attributes.TEXCOORD_0),
        colors=optional(attributes.COLOR_0),
        indices=_accessor(gltf, primitive.indices).reshape(-1, 3).astype(np.int64),
        texture=texture,
    )


def sample_bilinear(texture: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """Sample like a GPU: glTF uv (0, 0) is the image's top-left corner, texel centres at +0.5."""
    height, width = texture.shape[:2]
    x = np.clip(uvs[:, 0] * width - 0.5, 0, width - 1)
    y = np.clip(uvs[:, 1] * height - 0.5, 0, height - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    image = texture.astype(np.float64) / 255.0
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def surface_samples(positions: np.ndarray, faces: np.ndarray, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(face index, barycentric [count, 3]) of points spread uniformly over the surface by area."""
    rng = np.random.default_rng(seed)
    corners = positions[faces]
    areas = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    face = rng.choice(len(faces), size=count, p=areas / areas.sum())
    r1, r2 = rng.random(count), rng.random(count)
    root = np.sqrt(r1)
    return face, np.stack([1 - root, root * (1 - r2), root * r2], axis=1)
