"""Our torch marching cubes equals PyMCubes (the CPU path and oracle) on analytic fields."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

from models.golden.meshes import same_mesh_unordered
from models.isosurface.marching_cubes import case_table, marching_cubes, marching_cubes_pymcubes, marching_cubes_torch

RESOLUTION = 40
AXIS = np.linspace(-1.0, 1.0, RESOLUTION)
VOXEL = AXIS[1] - AXIS[0]
X, Y, Z = np.meshgrid(AXIS, AXIS, AXIS, indexing="ij")
SPHERE_RADIUS = 0.55


def sphere() -> np.ndarray:
    # Off-centre so the field has no symmetry that could hide an axis mix-up.
    return SPHERE_RADIUS - np.sqrt((X - 0.07) ** 2 + (Y + 0.03) ** 2 + (Z - 0.05) ** 2)


def torus() -> np.ndarray:
    ring = np.sqrt(X**2 + Y**2) - 0.5
    return 0.22 - np.sqrt(ring**2 + (Z * 1.2) ** 2)


def two_blobs() -> np.ndarray:
    a = 0.3 - np.sqrt((X + 0.45) ** 2 + Y**2 + Z**2)
    b = 0.25 - np.sqrt((X - 0.45) ** 2 + (Y - 0.1) ** 2 + Z**2)
    return np.maximum(a, b)


FIELDS = {"sphere": (sphere, 1), "torus": (torus, 1), "two_blobs": (two_blobs, 2)}


def to_mesh(vertices: np.ndarray, faces: np.ndarray) -> trimesh.Trimesh:
    return trimesh.Trimesh(vertices, faces, process=False)


@pytest.fixture(scope="module", params=sorted(FIELDS))
def field(request) -> tuple[str, np.ndarray, int]:
    make, components = FIELDS[request.param]
    return request.param, make().astype(np.float32), components


def assert_same_as_pymcubes(volume: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    ref_vertices, ref_faces = marching_cubes_pymcubes(volume, level)
    vertices, faces = marching_cubes_torch(torch.from_numpy(volume), level)
    vertices, faces = vertices.numpy(), faces.numpy()
    assert len(ref_faces) > 100
    assert vertices.shape == ref_vertices.shape and faces.shape == ref_faces.shape
    # Same surface: vertices pair up one-to-one (by grid edge) within 1e-4 of a voxel (index space:
    # voxel = 1), and the triangles are the same with the same winding.
    check = same_mesh_unordered("mesh", vertices, faces, ref_vertices, ref_faces, grid_shape=volume.shape, atol=1e-4)
    assert check.ok, (check.max_abs_err, check.detail)
    return vertices, faces


def test_torch_equals_pymcubes(field) -> None:
    _, volume, components = field
    vertices, faces = assert_same_as_pymcubes(volume, 0.0)
    ref_vertices, ref_faces = marching_cubes_pymcubes(volume, 0.0)
    mesh = to_mesh(vertices, faces)
    assert mesh.is_watertight
    assert len(mesh.split(only_watertight=False)) == components
    assert np.isclose(mesh.volume, to_mesh(ref_vertices, ref_faces).volume, rtol=1e-6)


def test_torch_equals_pymcubes_on_a_noisy_field_with_ambiguous_cubes() -> None:
    """Smoothed noise at its median: saddles everywhere, so every ambiguous case is exercised."""
    noise = np.random.default_rng(7).standard_normal((28, 28, 28))
    volume = gaussian_filter(noise, 1.2).astype(np.float32)
    level = float(np.median(volume))
    corners = np.stack([volume[i : i + 27, j : j + 27, k : k + 27] > level for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    assert len(np.unique(np.packbits(corners, axis=0, bitorder="little"))) > 150  # most of the 256 cases occur
    assert_same_as_pymcubes(volume, level)


def test_sphere_radius_within_half_a_voxel() -> None:
    vertices, _ = marching_cubes_torch(torch.from_numpy(sphere().astype(np.float32)), 0.0)
    world = vertices.numpy() * VOXEL - 1.0
    radii = np.linalg.norm(world - np.array([0.07, -0.03, 0.05]), axis=1)
    assert abs(radii.mean() - SPHERE_RADIUS) < 0.5 * VOXEL


def test_grid_values_equal_to_the_level_count_as_outside_like_pymcubes() -> None:
    volume = np.zeros((6, 6, 6), dtype=np.float32)
    volume[2:4, 2:4, 2:4] = 1.0
    volume[2, 2, 2] = 0.5  # exactly on the level
    ref_vertices, ref_faces = marching_cubes_pymcubes(volume, 0.5)
    vertices, faces = marching_cubes_torch(torch.from_numpy(volume), 0.5)
    assert vertices.shape == ref_vertices.shape and faces.shape == ref_faces.shape


def test_empty_and_full_volumes_give_no_surface() -> None:
    for value in (-1.0, 1.0):
        vertices, faces = marching_cubes_torch(torch.full((5, 5, 5), value), 0.0)
        assert vertices.shape == (0, 3) and faces.shape == (0, 3)


def test_case_table_is_well_formed() -> None:
    triangles, counts = case_table()
    assert counts[0] == counts[255] == 0
    assert counts.max() <= 5
    assert all((triangles[c, : counts[c]] >= 0).all() and (triangles[c, counts[c] :] == -1).all() for c in range(256))
    # A single inside corner is cut by one triangle, whichever corner.
    assert all(counts[1 << n] == 1 for n in range(8))


def test_auto_backend_uses_pymcubes_for_cpu_grids() -> None:
    volume = torch.from_numpy(sphere().astype(np.float32))
    vertices, faces, backend = marching_cubes(volume, 0.0)
    assert backend == "pymcubes"
    ref_vertices, ref_faces = marching_cubes_pymcubes(volume.numpy(), 0.0)
    np.testing.assert_array_equal(faces.numpy(), ref_faces)
    np.testing.assert_allclose(vertices.numpy(), ref_vertices)


@pytest.mark.gpu
def test_torch_path_stays_on_the_gpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    volume = torch.from_numpy(torus().astype(np.float32)).cuda()
    vertices, faces, backend = marching_cubes(volume, 0.0)
    assert backend == "torch" and vertices.is_cuda and faces.is_cuda
    ref_vertices, ref_faces = marching_cubes_pymcubes(volume.cpu().numpy(), 0.0)
    assert faces.shape == ref_faces.shape
    distance, _ = cKDTree(ref_vertices).query(vertices.cpu().numpy())
    assert distance.max() < 1e-4
