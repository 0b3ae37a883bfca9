"""The texture PNG's zlib level: the GLB carries exactly our PNG at the asked level, the pixels
are the texture's at any level, and the file stays a valid glTF."""

from __future__ import annotations

import io

import numpy as np
import pygltflib
import pytest
import trimesh
from PIL import Image

from lift3d.settings import load_settings
from pipeline.finish.export import export_glb, png_bytes
from tests.support.gltf_validator import assert_valid_glb


def textured_box(level: int) -> tuple[bytes, np.ndarray]:
    box = trimesh.creation.box()
    vertices, faces = box.vertices[box.faces].reshape(-1, 3), np.arange(len(box.faces) * 3).reshape(-1, 3)
    normals = np.repeat(box.face_normals, 3, axis=0)
    uvs = np.random.default_rng(0).random((len(vertices), 2)).astype(np.float32)
    texture = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    texture[:, :32] = 128  # compressible, so the levels differ in size
    return export_glb(vertices, faces, normals, uvs=uvs, texture=texture, png_compression=level), texture


def embedded_png(glb: bytes) -> bytes:
    gltf = pygltflib.GLTF2.load_from_bytes(glb)
    view = gltf.bufferViews[gltf.images[0].bufferView]
    return gltf.binary_blob()[view.byteOffset : view.byteOffset + view.byteLength]


@pytest.mark.parametrize("level", [0, 1, 9])
def test_the_glb_embeds_the_texture_png_at_the_asked_level(level):
    glb, texture = textured_box(level)
    png = embedded_png(glb)
    assert png == png_bytes(texture, level)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), texture)
    assert_valid_glb(glb)


def test_higher_levels_are_smaller_and_the_geometry_is_unchanged():
    fast, slow = textured_box(1)[0], textured_box(9)[0]
    assert len(embedded_png(slow)) < len(embedded_png(fast))
    a, b = pygltflib.GLTF2.load_from_bytes(fast), pygltflib.GLTF2.load_from_bytes(slow)
    for accessor in range(len(a.accessors)):
        view_a, view_b = a.bufferViews[a.accessors[accessor].bufferView], b.bufferViews[b.accessors[accessor].bufferView]
        assert a.binary_blob()[view_a.byteOffset : view_a.byteOffset + view_a.byteLength] == (
            b.binary_blob()[view_b.byteOffset : view_b.byteOffset + view_b.byteLength]
        )


def test_the_level_is_a_setting_and_out_of_range_levels_are_refused():
    assert load_settings({}).engine.finish.png_compression == 1
    assert load_settings({"LIFT3D_PNG_COMPRESSION": "6"}).engine.finish.png_compression == 6
    with pytest.raises(Exception):
        load_settings({"LIFT3D_PNG_COMPRESSION": "10"})
