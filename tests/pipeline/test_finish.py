"""Finishing: analytic meshes and colour fields through clean, decimate, unwrap, bake and export.

Every GLB produced here goes through the Khronos glTF Validator (0 errors).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from lift3d.errors import EmptyReconstruction
from pipeline.finish import RECON_TO_GLTF, FinishOptions, finish_mesh
from pipeline.finish.color import srgb_to_linear
from tests.support.finish_analytic import (
    box,
    box_colours_for,
    constant_colour,
    gradient_colours,
    grid,
    marching_cubes,
    read_glb,
    sample_bilinear,
    sphere,
    surface_samples,
    torus,
    torus_colours,
)
from tests.support.gltf_validator import assert_valid_glb

BOX_EXTENTS = (1.2, 0.8, 0.6)
# Samples closer than this to a chart's border (texels) count as "at a seam".
SEAM_MARGIN_TEXELS = 2


def rerender_error(result, colour_field) -> tuple[float, int]:  # noqa: ANN001
    """Mean |texture - field| (sRGB, per channel) at random surface points away from UV seams,
    read back from the GLB alone: positions, TEXCOORD_0 and the PNG, sampled like a GPU."""
    contents = read_glb(result.glb)
    face, barycentric = surface_samples(contents.positions, contents.indices, 40_000)
    corners = contents.indices[face]
    points = np.einsum("nk,nkd->nd", barycentric, contents.positions[corners])
    uvs = np.einsum("nk,nkd->nd", barycentric, contents.uvs[corners].astype(np.float64))
    size = contents.texture.shape[0]
    interior = binary_erosion(result.texture.covered, iterations=SEAM_MARGIN_TEXELS)
    texel_row = np.clip((uvs[:, 1] * size).astype(int), 0, size - 1)
    texel_col = np.clip((uvs[:, 0] * size).astype(int), 0, size - 1)
    away = interior[texel_row, texel_col]
    rendered = sample_bilinear(contents.texture, uvs[away])
    expected = colour_field(result.transform.to_reconstruction(points[away]).astype(np.float32))
    return float(np.abs(rendered - expected).mean()), int(away.sum())


@pytest.mark.parametrize(
    ("name", "shape", "colours", "target_faces"),
    [
        ("sphere", sphere, gradient_colours, 6000),
        ("torus", torus, torus_colours, 6000),
        ("box", lambda: box(BOX_EXTENTS), box_colours_for(BOX_EXTENTS), 0),
    ],
)
def test_baked_texture_reproduces_the_colour_field(name, shape, colours, target_faces) -> None:  # noqa: ANN001
    vertices, faces = shape()
    result = finish_mesh(vertices, faces, colours, FinishOptions(target_faces=target_faces, texture_size=512))
    assert_valid_glb(result.glb)
    error, samples = rerender_error(result, colours)
    assert samples > 20_000, f"{name}: too few samples away from seams ({samples})"
    assert error <= 2 / 255, f"{name}: mean colour error {error * 255:.2f}/255"
    assert result.qa["texture_size"] == 512 and read_glb(result.glb).texture.shape == (512, 512, 3)


def test_texture_padding_hides_chart_borders() -> None:
    """Texels just outside the charts carry chart colours, not black: bilinear and mip
    sampling at a seam stays close to the field."""
    vertices, faces = sphere()
    result = finish_mesh(vertices, faces, gradient_colours, FinishOptions(target_faces=4000, texture_size=512))
    outside = ~result.texture.covered
    assert outside.any()
    assert result.texture.image[outside].min() > 0.1 * 255 * 0.5  # the gradient never goes that dark
    contents = read_glb(result.glb)
    face, barycentric = surface_samples(contents.positions, contents.indices, 20_000, seed=1)
    corners = contents.indices[face]
    points = np.einsum("nk,nkd->nd", barycentric, contents.positions[corners])
    uvs = np.einsum("nk,nkd->nd", barycentric, contents.uvs[corners].astype(np.float64))
    expected = gradient_colours(result.transform.to_reconstruction(points).astype(np.float32))
    # Including the seams: still close on average, and no sample far off.
    error = np.abs(sample_bilinear(contents.texture, uvs) - expected)
    assert error.mean() <= 2 / 255
    assert np.quantile(error.max(axis=1), 0.999) < 12 / 255


@pytest.mark.parametrize("target", [1500, 5000, 12_000])
def test_decimation_hits_the_target_within_two_percent(target: int) -> None:
    vertices, faces = sphere(resolution=96)
    assert len(faces) > 2 * target
    result = finish_mesh(vertices, faces, gradient_colours, FinishOptions(target_faces=target, texture="vertex"))
    glb_faces = len(read_glb(result.glb).indices)
    assert abs(glb_faces - target) <= 0.02 * target
    assert result.qa["faces"] == glb_faces
    assert result.qa["watertight"] and result.qa["manifold"]
    assert_valid_glb(result.glb)


def test_target_zero_keeps_every_face() -> None:
    vertices, faces = sphere(resolution=40)
    result = finish_mesh(vertices, faces, gradient_colours, FinishOptions(target_faces=0, texture="vertex"))
    assert result.qa["faces"] == len(faces) == len(read_glb(result.glb).indices)


def test_floating_debris_is_removed() -> None:
    vertices, faces = sphere(resolution=48)
    specks = []
    for offset in ([0.9, 0.9, 0.9], [-0.9, 0.8, -0.85]):  # two tiny far-away blobs
        speck_vertices, speck_faces = sphere(resolution=10, radius=0.6)  # 5% of the body is ~370 faces
        specks.append((speck_vertices * 0.05 + np.float32(offset), speck_faces))
    for speck_vertices, speck_faces in specks:
        faces = np.concatenate([faces, speck_faces + len(vertices)])
        vertices = np.concatenate([vertices, speck_vertices])
    result = finish_mesh(vertices, faces, gradient_colours, FinishOptions(target_faces=0, texture="vertex"))
    assert result.qa["components_kept"] == 1
    assert result.qa["components_removed"] == 2
    contents = read_glb(result.glb)
    back = result.transform.to_reconstruction(contents.positions)
    assert np.abs(back).max() < 0.62  # nothing of the specks survives
    assert_valid_glb(result.glb)


def asymmetric_figure() -> tuple[np.ndarray, np.ndarray]:
    """In the reconstruction frame: a tall body along +z, a nose on the camera side (+x)
    high up, an arm towards +y low down. Each feature is on one side only."""
    x, y, z = grid(72)
    body = np.maximum.reduce([np.abs(x) - 0.25, np.abs(y) - 0.25, np.abs(z) - 0.9])
    nose = np.sqrt((x - 0.3) ** 2 + y**2 + (z - 0.5) ** 2) - 0.2
    arm = np.maximum.reduce([np.abs(x) - 0.1, np.abs(y - 0.45) - 0.35, np.abs(z + 0.5) - 0.1])
    return marching_cubes(-np.minimum.reduce([body, nose, arm]))


def test_gltf_frame_is_y_up_and_faces_the_input_view_along_plus_z() -> None:
    assert np.linalg.det(RECON_TO_GLTF) == pytest.approx(1.0)  # a rotation, never a mirror
    vertices, faces = asymmetric_figure()
    result = finish_mesh(vertices, faces, gradient_colours, FinishOptions(target_faces=0, texture="vertex"))
    assert_valid_glb(result.glb)
    contents = read_glb(result.glb)
    points = contents.positions
    low, high = points.min(axis=0), points.max(axis=0)
    height = high[1] - low[1]
    # Up: the tall body's axis is glTF Y, and the model rests on Y = 0.
    assert height == pytest.approx(1.0, abs=1e-6) and low[1] == pytest.approx(0.0, abs=1e-6)
    assert height > 1.5 * (high[0] - low[0]) and height > 1.5 * (high[2] - low[2])
    # Front: the nose (x_r > 0, high up) is the frontmost part, at +Z.
    front = points[points[:, 2] > high[2] - 0.02]
    back = points[points[:, 2] < low[2] + 0.02]
    assert front[:, 1].mean() > low[1] + 0.6 * height
    assert abs(back[:, 1].mean() - (low[1] + 0.5 * height)) < 0.1 * height  # the plain back of the body
    # Right: the arm (y_r > 0, low down) sticks out at +X (the viewer's right).
    right = points[points[:, 0] > high[0] - 0.02]
    left = points[points[:, 0] < low[0] + 0.02]
    assert right[:, 1].mean() < low[1] + 0.4 * height
    assert abs(left[:, 1].mean() - (low[1] + 0.5 * height)) < 0.1 * height
    # Winding and normals face outwards in the glTF frame too.
    corners = points[contents.indices]
    signed_volume = np.einsum("ij,ij->i", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum() / 6
    assert signed_volume > 0
    centre = points.mean(axis=0)
    outward = np.einsum("ij,ij->i", contents.normals, points - centre) > 0
    assert outward.mean() > 0.9


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_bounding_box_is_centred_grounded_and_scaled(scale: float) -> None:
    vertices, faces = box((0.4, 1.0, 0.7))
    vertices = vertices + np.float32([3.0, -2.0, 1.0])  # off-centre in the reconstruction frame
    result = finish_mesh(
        vertices, faces, gradient_colours, FinishOptions(target_faces=0, texture="vertex", scale=scale)
    )
    assert_valid_glb(result.glb)
    contents = read_glb(result.glb)
    low, high = contents.positions.min(axis=0), contents.positions.max(axis=0)
    # glTF (X, Y, Z) = (y_r, z_r, x_r): extents (1.0, 0.7, 0.4) scaled so the largest is `scale`.
    np.testing.assert_allclose(high - low, np.array([1.0, 0.7, 0.4]) * scale, atol=1e-5)
    assert low[1] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose([(low[0] + high[0]) / 2, (low[2] + high[2]) / 2], [0.0, 0.0], atol=1e-6)
    position_accessor = contents.gltf.accessors[contents.gltf.meshes[0].primitives[0].attributes.POSITION]
    np.testing.assert_allclose(position_accessor.min, low, atol=1e-6)
    np.testing.assert_allclose(result.qa["bounding_box"]["max"], high, atol=1e-5)


def test_vertex_colour_mode_writes_linear_color_0() -> None:
    vertices, faces = sphere(resolution=40)
    result = finish_mesh(vertices, faces, constant_colour(128 / 255), FinishOptions(target_faces=0, texture="vertex"))
    report = assert_valid_glb(result.glb)
    contents = read_glb(result.glb)
    assert contents.texture is None and contents.uvs is None
    color_accessor = contents.gltf.accessors[contents.gltf.meshes[0].primitives[0].attributes.COLOR_0]
    assert color_accessor.componentType == 5126 and color_accessor.type == "VEC3"
    assert contents.colors.shape == (len(contents.positions), 3)
    np.testing.assert_allclose(contents.colors, 0.2158, atol=5e-4)
    assert report["issues"]["numWarnings"] == 0
    assert result.qa["texture"] == "vertex" and result.qa["texture_size"] is None


def test_srgb_to_linear_matches_the_standard() -> None:
    values = srgb_to_linear(np.array([0.0, 0.04045, 128 / 255, 1.0]))
    np.testing.assert_allclose(values, [0.0, 0.04045 / 12.92, 0.21586, 1.0], atol=1e-5)


def test_material_is_pbr_single_sided_with_normals_and_an_srgb_texture() -> None:
    vertices, faces = sphere(resolution=40)
    result = finish_mesh(vertices, faces, gradient_colours, FinishOptions(target_faces=2000, texture_size=512))
    report = assert_valid_glb(result.glb, max_warnings=0)
    gltf = read_glb(result.glb).gltf
    material = gltf.materials[0]
    pbr = material.pbrMetallicRoughness
    assert pbr.metallicFactor == 0 and pbr.roughnessFactor == 1 and material.doubleSided is False
    assert pbr.baseColorTexture is not None and gltf.images[0].mimeType == "image/png"
    attributes = gltf.meshes[0].primitives[0].attributes
    assert attributes.NORMAL is not None and attributes.TEXCOORD_0 is not None
    assert gltf.asset.generator.startswith("lift3d ")
    assert report["info"]["totalTriangleCount"] == result.qa["faces"]
    # Vertices split along UV seams keep one normal: no shading seams.
    contents = read_glb(result.glb)
    _, welded, copies = np.unique(np.round(contents.positions, 6), axis=0, return_inverse=True, return_counts=True)
    welded = welded.reshape(-1)
    split = copies[welded] > 1
    assert split.sum() > 0
    first_normal = np.zeros((len(copies), 3))
    first_normal[welded[::-1]] = contents.normals[::-1]
    np.testing.assert_allclose(contents.normals[split], first_normal[welded[split]], atol=1e-6)


def test_inward_facing_input_is_flipped_outwards() -> None:
    vertices, faces = sphere(resolution=40)
    result = finish_mesh(vertices, faces[:, ::-1].copy(), gradient_colours, FinishOptions(target_faces=0, texture="vertex"))
    contents = read_glb(result.glb)
    corners = contents.positions[contents.indices]
    assert np.einsum("ij,ij->i", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum() > 0
    assert_valid_glb(result.glb)


def spiral_ramp(turns: float = 1.6, steps: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """An open ramp winding around the z axis: every face looks up, yet it covers itself
    when seen from above, so a projection along z overlaps."""
    angle = np.linspace(0, 2 * np.pi * turns, steps)
    radius = np.array([0.3, 0.45, 0.6])
    a, r = np.meshgrid(angle, radius, indexing="ij")
    vertices = np.stack([r * np.cos(a), r * np.sin(a), 0.04 * a], axis=-1).reshape(-1, 3).astype(np.float32)
    index = np.arange(len(vertices)).reshape(steps, len(radius))
    quads = np.stack([index[:-1, :-1], index[1:, :-1], index[1:, 1:], index[:-1, 1:]], axis=-1).reshape(-1, 4)
    faces = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]]).astype(np.int64)
    return vertices, faces


def test_overlapping_box_layout_falls_back_to_xatlas() -> None:
    vertices, faces = spiral_ramp()
    result = finish_mesh(vertices, faces, gradient_colours, FinishOptions(target_faces=0, texture_size=512))
    assert result.qa["uv_chart_method"] == "xatlas"
    assert "overlapped" in result.qa["notes"][0]
    assert result.texture.overlap_fraction == 0.0
    error, samples = rerender_error(result, gradient_colours)
    assert samples > 10_000 and error <= 2 / 255
    assert_valid_glb(result.glb)


def test_a_mesh_of_only_degenerate_faces_is_a_typed_error() -> None:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 0, 0]], np.float32)  # collinear, duplicated
    faces = np.array([[0, 1, 2], [0, 3, 1]])
    with pytest.raises(EmptyReconstruction):
        finish_mesh(vertices, faces, gradient_colours, FinishOptions())
