"""FlexiCubes extraction on analytic fields, and the derivation of its case tables."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from models.isosurface.flexicubes import (
    CORNER_OFFSETS,
    CUBE_EDGES,
    FACES,
    CubeWeights,
    case_groups,
    flexicubes,
    problem_face,
    regular_grid,
)
from models.isosurface.marching_cubes import marching_cubes_torch

SCALE = 2.1


def inside_corners(case: int) -> list[int]:
    return [n for n in range(8) if case >> n & 1]


def crossing_edges(case: int) -> set[int]:
    return {n for n, (a, b) in enumerate(CUBE_EDGES) if (case >> a & 1) != (case >> b & 1)}


# -- the derived tables ---------------------------------------------------------------------


def test_edges_join_corners_one_step_apart_and_cover_the_cube() -> None:
    assert len({frozenset(edge) for edge in CUBE_EDGES}) == 12
    for a, b in CUBE_EDGES:
        assert sum(x != y for x, y in zip(CORNER_OFFSETS[a], CORNER_OFFSETS[b])) == 1
    for face in FACES:  # four corners sharing one coordinate, consecutive ones joined by an edge
        assert len({CORNER_OFFSETS[c][axis] for c in face for axis in range(3)}) == 2
        for i in range(4):
            assert frozenset((face[i], face[(i + 1) % 4])) in {frozenset(edge) for edge in CUBE_EDGES}


@pytest.mark.parametrize("case", range(256))
def test_pieces_partition_the_crossing_edges(case: int) -> None:
    groups = case_groups(case)
    flat = [edge for group in groups for edge in group]
    assert len(flat) == len(set(flat)) and set(flat) == crossing_edges(case)
    assert all(len(group) >= 3 for group in groups)  # a piece closes a loop of at least three crossings
    assert case_groups(case) == case_groups(case) and len(groups) <= 4


def test_single_corners_and_their_complements_are_one_triangle() -> None:
    for corner in range(8):
        for case in (1 << corner, 255 - (1 << corner)):
            (group,) = case_groups(case)
            assert {frozenset(CUBE_EDGES[e]) for e in group} == {
                frozenset((corner, other)) for other in range(8) if bin(corner ^ other).count("1") == 1
            }


def test_ambiguous_faces_keep_the_inside_corners_apart() -> None:
    # Corners 0 and 3 (diagonal on the z = 0 face) inside: two separate corner pieces.
    assert len(case_groups(0b1001)) == 2
    # Opposite corners of the cube: two pieces, no face involved.
    assert len(case_groups(0b10000001)) == 2
    # The tetrahedral pattern (every face ambiguous): four corner triangles.
    assert [len(g) for g in case_groups(0b01101001)] == [3, 3, 3, 3]


def test_problem_cases_are_the_one_piece_complements_of_separated_faces() -> None:
    problems = [case for case in range(256) if problem_face(case) is not None]
    assert problems, "the derivation must find the doubly-touched configurations"
    for case in problems:
        face = FACES[problem_face(case)]
        assert len(inside_corners(case)) in (5, 6)
        # The complement separates the face's other diagonal: two pieces where this case has one.
        touching = [g for g in case_groups(case) if crossing_edges(case) & set(g)]
        assert len(case_groups(255 - case)) == len(case_groups(case)) + 1
        assert any(set(g) >= {e for e, (a, b) in enumerate(CUBE_EDGES) if a in face and b in face} for g in touching)
    # Rotations of a configuration are problems together: the set is closed under the 24 rotations.
    assert len(problems) % 24 == 0 or len(problems) % 12 == 0


def test_neighbouring_problem_cubes_are_swapped_and_that_keeps_the_mesh_manifold(monkeypatch) -> None:
    """Cubes (1,1,1) and (2,1,1) share an ambiguous face and each joins that face's inside corners around
    itself (six corners inside): one vertex each would put four triangles on one edge."""
    import models.isosurface.flexicubes as module

    resolution, n = 4, 5
    vertices, cubes = regular_grid(resolution, SCALE)
    field = torch.ones(n, n, n)
    field[1, 1:3, 1:3] = -1
    field[3, 1:3, 1:3] = -1
    field[2, 1, 1] = field[2, 2, 2] = -1  # the shared face: one diagonal inside, the other outside
    field = field * (1 + 0.1 * torch.rand(n, n, n, generator=torch.Generator().manual_seed(0)))
    sdf = field.reshape(-1)
    pair = torch.tensor([(1 * 4 + 1) * 4 + 1, (2 * 4 + 1) * 4 + 1])
    cases = ((sdf < 0)[cubes[pair]].long() * (1 << torch.arange(8))).sum(dim=1)
    assert all(problem_face(int(case)) is not None for case in cases)
    assert torch.equal(module.resolve_problem_cases(cases, pair, (4, 4, 4)), 255 - cases)

    weights = CubeWeights.neutral(cubes.shape[0])
    resolved = to_trimesh(*flexicubes(vertices, sdf, cubes, weights, resolution))
    assert resolved.is_watertight and resolved.euler_number == 2
    monkeypatch.setattr(module, "resolve_problem_cases", lambda cases, *_: cases)
    unresolved = to_trimesh(*module.flexicubes(vertices, sdf, cubes, weights, resolution))
    assert not unresolved.is_watertight and len(unresolved.vertices) == len(resolved.vertices) - 2


# -- analytic fields ------------------------------------------------------------------------


def extract(sdf_of, resolution: int, weights: CubeWeights | None = None):
    vertices, cubes = regular_grid(resolution, SCALE)
    sdf = sdf_of(vertices)
    weights = weights or CubeWeights.neutral(cubes.shape[0])
    return flexicubes(vertices, sdf, cubes, weights, resolution)


def to_trimesh(vertices: torch.Tensor, faces: torch.Tensor) -> trimesh.Trimesh:
    return trimesh.Trimesh(vertices.detach().numpy(), faces.numpy(), process=False)


def test_sphere_is_watertight_manifold_and_round() -> None:
    resolution, radius = 32, 0.7
    vertices, faces = extract(lambda p: p.norm(dim=1) - radius, resolution)
    mesh = to_trimesh(vertices, faces)
    mesh.merge_vertices()
    assert mesh.is_watertight and mesh.is_winding_consistent
    edges = np.sort(mesh.edges, axis=1)
    _, per_edge = np.unique(edges, axis=0, return_counts=True)
    assert (per_edge == 2).all()  # every edge borders exactly two triangles
    assert mesh.volume > 0  # faces point out, towards positive sdf
    voxel = SCALE / resolution
    assert abs(np.linalg.norm(mesh.vertices, axis=1).mean() - radius) < 0.5 * voxel
    assert abs(mesh.euler_number - 2) == 0


def test_torus_keeps_its_hole_and_random_weights_keep_it_closed() -> None:
    def torus(p: torch.Tensor) -> torch.Tensor:
        ring = torch.stack([p[:, :2].norm(dim=1) - 0.6, p[:, 2]], dim=1)
        return ring.norm(dim=1) - 0.25

    resolution = 28
    _, cubes = regular_grid(resolution, SCALE)
    raw = torch.randn(cubes.shape[0], 21, generator=torch.Generator().manual_seed(2))
    for weights in (None, CubeWeights.from_raw(raw, 0.5)):
        mesh = to_trimesh(*extract(torus, resolution, weights))
        mesh.merge_vertices()
        assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
        assert mesh.euler_number == 0  # genus one


def box_sdf(points: torch.Tensor, half: float) -> torch.Tensor:
    q = points.abs() - half
    return q.clamp_min(0).norm(dim=-1) + q.max(dim=-1).values.clamp_max(0)


def cube_surface_samples(half: float, per_face: int = 60) -> np.ndarray:
    t = np.linspace(-half, half, per_face)
    u, v = np.meshgrid(t, t)
    samples = []
    for axis in range(3):
        for sign in (-1, 1):
            p = np.zeros((u.size, 3))
            others = [a for a in range(3) if a != axis]
            p[:, axis] = sign * half
            p[:, others[0]], p[:, others[1]] = u.ravel(), v.ravel()
            samples.append(p)
    return np.concatenate(samples)


def hausdorff_to_cube(mesh: trimesh.Trimesh, half: float) -> float:
    on_mesh = np.concatenate([mesh.vertices, trimesh.sample.sample_surface(mesh, 100_000, seed=0)[0]])
    to_cube = np.abs(box_sdf(torch.from_numpy(on_mesh), half).numpy()).max()
    to_mesh = cKDTree(on_mesh).query(cube_surface_samples(half))[0].max()
    return float(max(to_cube, to_mesh))


def test_fitted_flexicubes_beat_marching_cubes_on_a_cube() -> None:
    """FlexiCubes' point: deformation and weights can be fitted so sharp features are kept,
    which marching cubes at the same resolution cannot do."""
    resolution, half = 12, 0.52
    vertices, cubes = regular_grid(resolution, SCALE)
    sdf = box_sdf(vertices, half)

    mc_vertices, mc_faces = marching_cubes_torch(-sdf.reshape((resolution + 1,) * 3), 0.0)
    mc_world = mc_vertices / resolution * SCALE - SCALE / 2
    mc = hausdorff_to_cube(to_trimesh(mc_world, mc_faces), half)

    torch.manual_seed(0)
    deformation = torch.zeros_like(vertices, requires_grad=True)
    raw = torch.zeros(cubes.shape[0], 21, requires_grad=True)
    targets = torch.from_numpy(cube_surface_samples(half, 24)).float()
    optimiser = torch.optim.Adam([deformation, raw], lr=0.01)
    limit = SCALE / resolution / 2
    for _ in range(60):
        mesh_vertices, _ = flexicubes(
            vertices + limit * torch.tanh(deformation), sdf, cubes, CubeWeights.from_raw(raw, 0.99), resolution
        )
        distances = torch.cdist(targets, mesh_vertices)
        loss = box_sdf(mesh_vertices, half).abs().mean() + distances.min(dim=1).values.mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        fitted_vertices, fitted_faces = flexicubes(
            vertices + limit * torch.tanh(deformation), sdf, cubes, CubeWeights.from_raw(raw, 0.99), resolution
        )
    fc = hausdorff_to_cube(to_trimesh(fitted_vertices, fitted_faces), half)
    assert fc < mc, (fc, mc)


def test_neutral_weights_are_dual_marching_cubes() -> None:
    """Zero deformation and neutral weights: each vertex is the plain mean of its piece's linear
    crossings, and each crossing edge inside the grid is one quad over its four cubes (brute force)."""
    resolution = 6
    vertices, cubes = regular_grid(resolution, SCALE)
    generator = torch.Generator().manual_seed(3)
    sdf = torch.randn(vertices.shape[0], generator=generator) + 0.3
    mesh_vertices, faces = flexicubes(vertices, sdf, cubes, CubeWeights.neutral(cubes.shape[0]), resolution)

    def case_of(cube_id: int) -> int:
        return sum(1 << n for n in range(8) if sdf[cubes[cube_id, n]] < 0)

    def resolved_case(cube_id: int) -> int:
        # Scalar restatement of the problem-case rule: a doubly-touched face next to another such cube swaps both.
        case = case_of(cube_id)
        if problem_face(case) is None:
            return case
        ijk = [cube_id // resolution**2, cube_id // resolution % resolution, cube_id % resolution]
        axis, side = divmod(problem_face(case), 2)
        ijk[axis] += 1 if side else -1
        if not 0 <= ijk[axis] < resolution:
            return case
        neighbour = (ijk[0] * resolution + ijk[1]) * resolution + ijk[2]
        return 255 - case if problem_face(case_of(neighbour)) is not None else case

    expected_vertices, vertex_of = [], {}
    for cube_id, corners in enumerate(cubes.tolist()):
        case = resolved_case(cube_id)
        for group in case_groups(case):
            points = []
            for edge in group:
                a, b = (corners[c] for c in CUBE_EDGES[edge])
                t = sdf[a] / (sdf[a] - sdf[b])
                points.append(vertices[a] + t * (vertices[b] - vertices[a]))
                vertex_of[(cube_id, frozenset((a, b)))] = len(expected_vertices)
            expected_vertices.append(torch.stack(points).mean(dim=0))
    expected = torch.stack(expected_vertices)
    assert any(problem_face(case_of(c)) is not None for c in range(cubes.shape[0]))  # the rule is exercised
    assert len(expected) == len(mesh_vertices)
    distance, match = cKDTree(mesh_vertices.numpy()).query(expected.numpy())
    assert distance.max() < 1e-5 and len(set(match.tolist())) == len(match)

    n = resolution + 1
    quads = set()
    for i, j, k in itertools.product(range(n), repeat=3):
        for axis in range(3):
            step = [0, 0, 0]
            step[axis] = 1
            other = (i + step[0], j + step[1], k + step[2])
            if max(other) >= n or (sdf[(i * n + j) * n + k] < 0) == (sdf[(other[0] * n + other[1]) * n + other[2]] < 0):
                continue
            u, v = [a for a in range(3) if a != axis]
            around = []
            for du, dv in ((-1, -1), (-1, 0), (0, -1), (0, 0)):
                c = [i, j, k]
                c[u] += du
                c[v] += dv
                if min(c) < 0 or max(c) >= resolution:
                    break
                key = (((c[0] * resolution) + c[1]) * resolution + c[2], frozenset(((i * n + j) * n + k, (other[0] * n + other[1]) * n + other[2])))
                around.append(int(match[vertex_of[key]]))
            else:
                quads.add(frozenset(around))
    ours = set()
    for pair in faces.reshape(-1, 2, 3).tolist():
        ours.add(frozenset(pair[0]) | frozenset(pair[1]))
    assert ours == quads
    # Neutral gamma: both diagonals tie, so every quad is split the same (second) way.
    assert len(faces) == 2 * len(quads)


@pytest.mark.gpu
def test_same_mesh_on_cuda_as_on_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    resolution = 24
    vertices, cubes = regular_grid(resolution, SCALE)
    sdf = vertices.norm(dim=1) - 0.6 + 0.05 * torch.sin(7 * vertices[:, 0])
    weights = CubeWeights.from_raw(torch.randn(cubes.shape[0], 21, generator=torch.Generator().manual_seed(0)), 0.5)
    cpu = flexicubes(vertices, sdf, cubes, weights, resolution)
    cuda_weights = CubeWeights(weights.beta.cuda(), weights.alpha.cuda(), weights.gamma.cuda())
    gpu = flexicubes(vertices.cuda(), sdf.cuda(), cubes.cuda(), cuda_weights, resolution)
    assert torch.allclose(cpu[0], gpu[0].cpu(), atol=1e-5)
    assert torch.equal(cpu[1], gpu[1].cpu())
