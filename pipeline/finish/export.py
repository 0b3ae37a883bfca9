"""GLB export: trimesh writes the file in memory, pygltflib annotates and completes it."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pygltflib
import trimesh
from PIL import Image

import lift3d

# zlib level of the texture PNG (engine.finish.png_compression): 1 encodes a 1024² texture in
# about a third of level 6's time, for a few percent more bytes (benchmarks/results/finish.md).
DEFAULT_PNG_COMPRESSION = 1
# trimesh encodes a texture with PIL's defaults (zlib level 6) and takes no level, so it is
# handed this 1-pixel placeholder and the real texture's PNG replaces it afterwards.
_PLACEHOLDER = np.zeros((1, 1, 3), np.uint8)

METALLIC = 0.0
ROUGHNESS = 1.0
GENERATOR = f"lift3d {lift3d.__version__}"


def _textured_mesh(vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, uvs: np.ndarray, texture: np.ndarray) -> trimesh.Trimesh:
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(texture, mode="RGB"),
        baseColorFactor=[255, 255, 255, 255],
        metallicFactor=METALLIC,
        roughnessFactor=ROUGHNESS,
        doubleSided=False,
    )
    # trimesh stores OpenGL-style UVs (v up) and flips them on export; ours run down the
    # image rows like glTF's, so flip them once here to cancel that.
    opengl_uvs = np.column_stack([uvs[:, 0], 1.0 - uvs[:, 1]])
    visual = trimesh.visual.TextureVisuals(uv=opengl_uvs, material=material)
    return trimesh.Trimesh(vertices, faces, vertex_normals=normals, visual=visual, process=False)


def png_bytes(texture: np.ndarray, compression: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(texture, mode="RGB").save(buffer, format="PNG", compress_level=compression)
    return buffer.getvalue()


def _replace_buffer_view(gltf: pygltflib.GLTF2, view_index: int, data: bytes) -> None:
    """Put ``data`` in place of one bufferView of the binary chunk, moving the views after it."""
    blob = gltf.binary_blob() or b""
    views = sorted(range(len(gltf.bufferViews)), key=lambda i: gltf.bufferViews[i].byteOffset or 0)
    parts: list[bytes] = []
    offset = 0
    for index in views:
        view = gltf.bufferViews[index]
        start = view.byteOffset or 0
        chunk = data if index == view_index else blob[start : start + view.byteLength]
        padding = -offset % 4
        parts.append(b"\x00" * padding)
        offset += padding
        view.byteOffset, view.byteLength = offset, len(chunk)
        parts.append(chunk)
        offset += len(chunk)
    gltf.set_binary_blob(b"".join(parts))
    gltf.buffers[0].byteLength = offset


def _append_float_attribute(gltf: pygltflib.GLTF2, values: np.ndarray, accessor_type: str) -> int:
    """Append ``values`` [N, k] float32 to the binary chunk as a new accessor; return its index."""
    blob = gltf.binary_blob() or b""
    blob += b"\x00" * (-len(blob) % 4)
    data = np.ascontiguousarray(values, dtype="<f4").tobytes()
    gltf.bufferViews.append(
        pygltflib.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(data), target=pygltflib.ARRAY_BUFFER)
    )
    gltf.accessors.append(
        pygltflib.Accessor(
            bufferView=len(gltf.bufferViews) - 1, componentType=pygltflib.FLOAT, count=len(values), type=accessor_type
        )
    )
    gltf.set_binary_blob(blob + data)
    gltf.buffers[0].byteLength = len(blob) + len(data)
    return len(gltf.accessors) - 1


def _set_material(gltf: pygltflib.GLTF2) -> None:
    """Every primitive gets the one PBR material: metallic 0, roughness 1, single-sided."""
    if not gltf.materials:
        gltf.materials.append(pygltflib.Material(pbrMetallicRoughness=pygltflib.PbrMetallicRoughness()))
    material = gltf.materials[0]
    pbr = material.pbrMetallicRoughness or pygltflib.PbrMetallicRoughness()
    pbr.baseColorFactor = [1.0, 1.0, 1.0, 1.0]
    pbr.metallicFactor = METALLIC
    pbr.roughnessFactor = ROUGHNESS
    material.pbrMetallicRoughness = pbr
    material.doubleSided = False
    material.name = material.name or "lift3d"
    for mesh in gltf.meshes:
        for primitive in mesh.primitives:
            primitive.material = 0


def export_glb(
    vertices: np.ndarray,
    faces: np.ndarray,
    normals: np.ndarray,
    *,
    uvs: np.ndarray | None = None,
    texture: np.ndarray | None = None,
    linear_vertex_colors: np.ndarray | None = None,
    extras: dict[str, Any] | None = None,
    png_compression: int = DEFAULT_PNG_COMPRESSION,
) -> bytes:
    """GLB bytes of one mesh, in glTF's frame already: textured when ``texture`` is given,
    with linear COLOR_0 when ``linear_vertex_colors`` is given."""
    if texture is not None:
        if uvs is None:
            raise ValueError("a texture needs uvs")
        mesh = _textured_mesh(vertices, faces, normals, uvs, _PLACEHOLDER)
    else:
        mesh = trimesh.Trimesh(vertices, faces, vertex_normals=normals, process=False)
    gltf = pygltflib.GLTF2.load_from_bytes(mesh.export(file_type="glb", include_normals=True))
    if texture is not None:
        _replace_buffer_view(gltf, gltf.images[0].bufferView, png_bytes(texture, png_compression))
    gltf.asset.generator = GENERATOR
    gltf.asset.extras = dict(extras or {})
    if linear_vertex_colors is not None:
        # Float COLOR_0 rather than trimesh's 8-bit one: linear 8-bit bands in the shadows.
        color_accessor = _append_float_attribute(gltf, linear_vertex_colors, pygltflib.VEC3)
        gltf.meshes[0].primitives[0].attributes.COLOR_0 = color_accessor
    _set_material(gltf)
    return b"".join(gltf.save_to_bytes())
