"""FlexiCubes isosurface extraction (Shen et al., SIGGRAPH 2023) in plain torch, inference mode.

Written from the paper and from the conventions the InstantMesh golden vectors record;
it runs on whatever device its inputs live on and needs no extension.

FlexiCubes is dual marching cubes with three learned per-cube weight sets:
- every surface cube gets one vertex per connected piece of surface inside it (its
  marching-cubes case says which crossing edges form a piece);
- that vertex is the beta-weighted mean of its edges' crossing points, and each crossing
  point interpolates the sdf values after scaling them by the cube's per-corner alpha;
- every crossing edge shared by four surface cubes becomes a quad over the four cubes'
  vertices, oriented so its normal points towards positive sdf, and split along the
  diagonal whose product of per-cube gamma values is larger.

With alpha = beta = 1 that is exactly dual marching cubes (plain linear crossings, vertex
= mean of its crossings). The case tables are derived here from the cube's geometry,
not typed in (``case_groups``); tests check the derivation.

Conventions (the reference's, which the golden faces depend on): corner n of a cube is
at offset (bit 0, bit 1, bit 2) of n along (x, y, z); the 12 edges are numbered as in
``CUBE_EDGES`` (that numbering is the channel order of beta); a grid point is inside
when its sdf is negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

# Corner n sits at (n & 1, n >> 1 & 1, n >> 2 & 1).
CORNER_OFFSETS = tuple(tuple((n >> axis) & 1 for axis in range(3)) for n in range(8))
# The reference's edge numbering: four edges around the y = 0 face, four around y = 1,
# then the four y-edges (listed from their y = 1 end). beta[:, e] belongs to edge e.
CUBE_EDGES = ((0, 1), (1, 5), (4, 5), (0, 4), (2, 3), (3, 7), (6, 7), (2, 6), (2, 0), (3, 1), (7, 5), (6, 4))
MAX_GROUPS = 4  # at most four pieces in one cube (four corners inside, no two sharing an edge)
WEIGHT_CHANNELS = 21  # 12 beta (edges) + 8 alpha (corners) + 1 gamma (cube)


def _faces() -> list[tuple[int, int, int, int]]:
    """The 6 cube faces, each as its 4 corners in cyclic order."""
    faces = []
    for axis in range(3):
        u, v = [a for a in range(3) if a != axis]
        for side in (0, 1):
            cycle = [(0, 0), (1, 0), (1, 1), (0, 1)]
            faces.append(tuple(sum(((side, du, dv)[k] << (axis, u, v)[k]) for k in range(3)) for du, dv in cycle))
    return faces


FACES = _faces()
_EDGE_INDEX = {frozenset(edge): n for n, edge in enumerate(CUBE_EDGES)}


def _face_edges(face: tuple[int, int, int, int]) -> list[int]:
    """Edge i of the list joins corners face[i] and face[i + 1]."""
    return [_EDGE_INDEX[frozenset((face[i], face[(i + 1) % 4]))] for i in range(4)]


@lru_cache(maxsize=None)
def case_groups(case: int) -> tuple[tuple[int, ...], ...]:
    """Case id (bit n set = corner n inside) -> the crossing edges of each surface piece.

    On each face the surface crosses 0, 2 or 4 edges; 2 crossings are joined by one
    segment, 4 (an ambiguous face: diagonal corners alike) by two segments that cut off
    the two inside corners, which is the reference table's choice for every case. The
    pieces are the connected components of crossing edges under those segments.
    """
    inside = [(case >> n) & 1 for n in range(8)]
    crossing = [n for n, (a, b) in enumerate(CUBE_EDGES) if inside[a] != inside[b]]
    parent = {edge: edge for edge in crossing}

    def root(edge: int) -> int:
        while parent[edge] != edge:
            edge = parent[edge]
        return edge

    def join(a: int, b: int) -> None:
        parent[root(a)] = root(b)

    for face in FACES:
        edges = _face_edges(face)
        on_face = [edge for edge in edges if edge in parent]
        if len(on_face) == 2:
            join(*on_face)
        elif len(on_face) == 4:
            for i, corner in enumerate(face):
                if inside[corner]:  # cut this corner off: join the two face edges that meet at it
                    join(edges[i - 1], edges[i])
    groups: dict[int, list[int]] = {}
    for edge in crossing:
        groups.setdefault(root(edge), []).append(edge)
    return tuple(sorted(tuple(sorted(g)) for g in groups.values()))


@lru_cache(maxsize=None)
def problem_face(case: int) -> int | None:
    """The ambiguous face whose four crossings all belong to one piece, if the case has one.

    Such a piece (five or six corners inside, the inside ones joined around the cube)
    touches the face twice; when the cube across the face does the same, their two
    vertices end up joined by an edge of four triangles (non-manifold). There the
    reference uses the complementary case's pieces for both cubes instead
    (``resolve_problem_cases``), which separate the face's outside corners.
    """
    faces = []
    for n, face in enumerate(FACES):
        edges = set(_face_edges(face))
        if any(edges <= set(group) for group in case_groups(case)):
            faces.append(n)
    if len(faces) > 1:
        raise AssertionError(f"case {case} has {len(faces)} doubly-touched faces")
    return faces[0] if faces else None


def face_direction(face: int) -> tuple[int, int, int]:
    """Offset (in cubes) of the neighbour across face n (faces come axis by axis, low side first)."""
    axis, side = divmod(face, 2)
    return tuple((2 * side - 1) if a == axis else 0 for a in range(3))  # type: ignore[return-value]


@lru_cache(maxsize=None)
def _tables() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[256, MAX_GROUPS, 12] edge membership (bool), [256] piece count, [256, 3] problem direction, on the CPU.

    The problem direction is (0, 0, 0) for cases without a doubly-touched face.
    """
    members = torch.zeros(256, MAX_GROUPS, 12, dtype=torch.bool)
    counts = torch.zeros(256, dtype=torch.long)
    directions = torch.zeros(256, 3, dtype=torch.long)
    for case in range(256):
        face = problem_face(case)
        if face is not None:
            directions[case] = torch.tensor(face_direction(face))
        groups = case_groups(case)
        counts[case] = len(groups)
        for g, edges in enumerate(groups):
            members[case, g, list(edges)] = True
    return members, counts, directions


def resolve_problem_cases(cases: torch.Tensor, cube_ids: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Swap a problem case for its complement when the cube across its problem face is a problem case too.

    ``cube_ids`` are the x-major indices of the surface cubes in a grid of ``shape`` cubes.
    """
    directions = _tables()[2].to(cases.device)[cases]
    is_problem = directions.abs().sum(dim=1) > 0
    if not bool(is_problem.any()):
        return cases
    sizes = torch.tensor(shape, device=cases.device)
    problem_case = torch.zeros(int(sizes.prod()), dtype=torch.bool, device=cases.device)
    problem_case[cube_ids[is_problem]] = True
    ijk = torch.stack([cube_ids // (shape[1] * shape[2]), cube_ids // shape[2] % shape[1], cube_ids % shape[2]], dim=1)
    neighbour = ijk + directions
    inside = ((neighbour >= 0) & (neighbour < sizes)).all(dim=1) & is_problem
    flat = (neighbour[:, 0] * shape[1] + neighbour[:, 1]) * shape[2] + neighbour[:, 2]
    swap = inside & problem_case[flat.clamp(0, problem_case.numel() - 1)]
    return torch.where(swap, 255 - cases, cases)


@dataclass(frozen=True)
class CubeWeights:
    beta: torch.Tensor  # [F, 12] per cube edge, weights of the crossing points in the vertex mean
    alpha: torch.Tensor  # [F, 8] per cube corner, scales the sdf before the crossing is interpolated
    gamma: torch.Tensor  # [F] per cube, decides how quads are split

    @classmethod
    def from_raw(cls, raw: torch.Tensor, weight_scale: float) -> "CubeWeights":
        """Unbounded network outputs [F, 21] -> weights around the neutral 1 (beta, alpha) and 0.5 (gamma)."""
        return cls(
            beta=torch.tanh(raw[:, :12]) * weight_scale + 1,
            alpha=torch.tanh(raw[:, 12:20]) * weight_scale + 1,
            gamma=torch.sigmoid(raw[:, 20]) * weight_scale + (1 - weight_scale) / 2,
        )

    @classmethod
    def neutral(cls, cubes: int, device: torch.device | str = "cpu") -> "CubeWeights":
        """The weights that reduce FlexiCubes to dual marching cubes."""
        ones = torch.ones(cubes, device=device)
        return cls(beta=ones[:, None].expand(cubes, 12), alpha=ones[:, None].expand(cubes, 8), gamma=ones)


def regular_grid(resolution: int, scale: float, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's lattice: (G+1)^3 vertices x-major at (round(i/G, 5) - 0.5) * scale, and G^3 cubes.

    The rounding to 5 decimals is the reference's and shows at G = 128. Cubes are
    enumerated x-major, each listing its corners in ``CORNER_OFFSETS`` order.
    """
    n = resolution + 1
    steps = torch.round(torch.arange(n, dtype=torch.float64) / resolution * 1e5) / 1e5
    axis = (steps.float() - 0.5) * scale
    vertices = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    i, j, k = torch.meshgrid(*(torch.arange(resolution),) * 3, indexing="ij")
    base = ((i * n + j) * n + k).reshape(-1, 1)
    offsets = torch.tensor([(dx * n + dy) * n + dz for dx, dy, dz in CORNER_OFFSETS])
    return vertices.to(device), (base + offsets).to(device)


def flexicubes(
    vertices: torch.Tensor,
    sdf: torch.Tensor,
    cubes: torch.Tensor,
    weights: CubeWeights,
    shape: int | tuple[int, int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deformed grid vertices [N, 3], sdf [N], cubes [F, 8] (x-major in a grid of ``shape`` cubes),
    weights -> mesh vertices [M, 3], faces [T, 3].

    Mesh vertices are listed cube by cube (in cube order, pieces in ``case_groups`` order);
    triangles face towards positive sdf.
    """
    device = vertices.device
    members, counts, _ = (table.to(device) for table in _tables())
    shape = (shape, shape, shape) if isinstance(shape, int) else tuple(shape)
    corner_inside = (sdf < 0)[cubes]  # [F, 8]
    inside_count = corner_inside.sum(dim=1)
    surface = torch.nonzero((inside_count > 0) & (inside_count < 8)).squeeze(1)
    if surface.numel() == 0:
        return vertices.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.long, device=device)
    bits = 1 << torch.arange(8, device=device)
    cases = resolve_problem_cases((corner_inside[surface].long() * bits).sum(dim=1), surface, shape)
    ends = torch.tensor(CUBE_EDGES, device=device)  # [12, 2] cube-local corners
    corner_ids = cubes[surface]  # [S, 8]
    edge_vertices = corner_ids[:, ends]  # [S, 12, 2] grid vertex ids

    # Crossing points, with each cube's own alpha at its edge's two corners.
    weighted = sdf[edge_vertices] * weights.alpha[surface][:, ends]  # [S, 12, 2]
    x0, x1 = vertices[edge_vertices[..., 0]], vertices[edge_vertices[..., 1]]
    w0, w1 = weighted[..., :1], weighted[..., 1:]
    # Edges that do not cross get a dummy denominator, so no NaN reaches a gradient through the masks below.
    crosses = (sdf[edge_vertices[..., :1]] < 0) != (sdf[edge_vertices[..., 1:]] < 0)
    crossing = (x0 * w1 - x1 * w0) / torch.where(crosses, w1 - w0, torch.ones((), device=device))  # [S, 12, 3]

    # One vertex per (surface cube, piece): beta-weighted mean of the piece's crossings.
    piece_edges = members[cases]  # [S, 4, 12]
    piece_beta = torch.where(piece_edges, weights.beta[surface][:, None, :], torch.zeros((), device=device))
    safe_crossing = torch.where(piece_edges[..., None], crossing[:, None], torch.zeros((), device=device))
    vertex_sum = (safe_crossing * piece_beta[..., None]).sum(dim=2)  # [S, 4, 3]
    valid_piece = torch.arange(MAX_GROUPS, device=device) < counts[cases][:, None]  # [S, 4]
    mesh_vertices = (vertex_sum / piece_beta.sum(dim=2, keepdim=True).clamp_min(1e-12))[valid_piece]
    vertex_id = torch.full(valid_piece.shape, -1, dtype=torch.long, device=device)
    vertex_id[valid_piece] = torch.arange(int(valid_piece.sum()), device=device)
    # Which mesh vertex each crossing edge of a cube belongs to ([S, 12], -1 where none).
    edge_vertex = (piece_edges.long() * (vertex_id[..., None] + 1)).sum(dim=1) - 1

    # Quads: one per crossing grid edge that four surface cubes share.
    edge_key = (edge_vertices[..., 0] * vertices.shape[0] + edge_vertices[..., 1]).reshape(-1)
    _, inverse, shared_by = torch.unique(edge_key, return_inverse=True, return_counts=True)
    is_quad = (shared_by[inverse] == 4) & (edge_vertex.reshape(-1) >= 0)
    slots = torch.nonzero(is_quad).squeeze(1)  # (cube, edge) slots, cube-major
    order = torch.sort(inverse[slots], stable=True).indices  # group by grid edge, cubes kept in cube order
    slots = slots[order].reshape(-1, 4)
    quads = edge_vertex.reshape(-1)[slots]  # [Q, 4]: cubes (-,-), (-,+), (+,-), (+,+) around the edge
    first_end = edge_vertices.reshape(-1, 2)[slots[:, 0], 0]
    # Walk the four cubes as a cycle whose normal points to the positive side of the edge.
    positive_first = (sdf[first_end] > 0)[:, None]
    quads = torch.where(positive_first, quads[:, [0, 1, 3, 2]], quads[:, [2, 3, 1, 0]])

    cube_gamma = weights.gamma[surface][:, None].expand(-1, MAX_GROUPS)[valid_piece]
    g = cube_gamma[quads]
    split_02 = (g[:, 0] * g[:, 2] > g[:, 1] * g[:, 3])[:, None]
    faces = torch.where(split_02, quads[:, [0, 1, 2, 0, 2, 3]], quads[:, [0, 1, 3, 3, 1, 2]])
    return mesh_vertices, faces.reshape(-1, 3)
