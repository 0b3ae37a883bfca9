"""Golden check of the mesh (FlexiCubes) variant: any set folder in the InstantMesh mesh-golden format.

Builds the model from the set's ``config.json`` (sizes, grid resolution and scale all
come from there), loads ``weights.safetensors`` by the checkpoint rule, runs every case
of ``cases.json`` and compares every recorded output with the tolerance recorded for it.

Our mesh lists its vertices cube by cube, the reference in its own order, so meshes are
compared order-independently: vertices are paired one to one by position (within the
set's ``mesh_vertices`` atol), faces must be the same triangles over paired vertices
(and with the same winding, checked separately), and per-vertex colours are compared in
the paired order. A stage-isolated check runs our FlexiCubes on the recorded grid
prediction too, so a field error and an extraction error are told apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from models.golden.compare import CaseReport, TensorCheck, close, exact
from models.instantmesh.config import LRMConfig
from models.instantmesh.golden import LazyCase, compare
from models.instantmesh.loading import build_empty, extract_lrm_state_dict, load_state_strict
from models.instantmesh.lrm import FLEXICUBES_WEIGHT_SCALE, InstantMesh
from models.isosurface.flexicubes import CubeWeights, flexicubes, regular_grid


def load_golden_model(set_dir: Path) -> InstantMesh:
    config = LRMConfig.from_json(set_dir / "config.json")
    if config.variant != "mesh":
        raise ValueError(f"{set_dir} is not a mesh-variant set")
    state, _ = extract_lrm_state_dict(load_file(str(set_dir / "weights.safetensors")))
    model = build_empty(config)
    load_state_strict(model, state)
    assert isinstance(model, InstantMesh)
    return model.eval()


def pair_vertices(ours: np.ndarray, ref: np.ndarray, atol: float) -> tuple[np.ndarray | None, float, str]:
    """Index into ``ref`` of each of ``ours`` (nearest, one to one, within atol) or None with the reason."""
    if ours.shape != ref.shape:
        return None, float("inf"), f"{len(ours)} vertices vs {len(ref)}"
    if len(ours) == 0:
        return np.zeros(0, dtype=np.int64), 0.0, ""
    a, b = torch.from_numpy(ours).double(), torch.from_numpy(ref).double()
    nearest, distance = [], []
    for start in range(0, len(a), 4096):
        d = torch.cdist(a[start : start + 4096], b)
        value, index = d.min(dim=1)
        nearest.append(index)
        distance.append(value)
    match = torch.cat(nearest).numpy()
    worst = float((torch.from_numpy(ours).double() - b[match]).abs().max())
    if len(np.unique(match)) != len(match):
        return None, worst, "vertices do not pair one to one"
    if worst > atol:
        return None, worst, "a vertex has no reference vertex within atol"
    return match, worst, ""


def triangles(faces: np.ndarray, *, keep_winding: bool) -> set[tuple[int, ...]]:
    if keep_winding:
        start = faces.argmin(axis=1)
        faces = np.stack([faces[np.arange(len(faces)), (start + k) % 3] for k in range(3)], axis=1)
    else:
        faces = np.sort(faces, axis=1)
    return set(map(tuple, faces.tolist()))


def mesh_checks(
    label: str, vertices: np.ndarray, faces: np.ndarray, ref_vertices: np.ndarray, ref_faces: np.ndarray, atol: float
) -> tuple[list[TensorCheck], np.ndarray | None]:
    match, worst, why = pair_vertices(vertices, ref_vertices, atol)
    checks = [TensorCheck(f"mesh_vertices{label}", match is not None, worst, f"paired atol={atol:g}", why)]
    if match is None or len(faces) != len(ref_faces):
        detail = why or f"{len(faces)} faces vs {len(ref_faces)}"
        checks.append(TensorCheck(f"mesh_faces{label}", False, float("inf"), "same triangles", detail))
        return checks, None
    paired = match[faces] if len(faces) else faces
    same = triangles(paired, keep_winding=False) == triangles(ref_faces, keep_winding=False)
    wound = triangles(paired, keep_winding=True) == triangles(ref_faces, keep_winding=True)
    checks.append(TensorCheck(f"mesh_faces{label}", same, 0.0 if same else float("inf"), "same triangles"))
    checks.append(TensorCheck(f"mesh_winding{label}", wound, 0.0 if wound else float("inf"), "same winding"))
    return checks, match


class MeshCaseRun(LazyCase):
    """A mesh-variant case: SDF, deformation and FlexiCubes weights on the set's own grid."""

    model: InstantMesh

    def query(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._once("query", lambda: self.model.synthesizer.geometry(self.planes(), self.input("query_points")))

    def grid(self):
        def compute():
            vertices, cubes = self.model.flexicubes_grid("cpu")
            return self.model.synthesizer.grid_prediction(self.planes(), vertices, cubes, self.model.config.grid_res)

        return self._once("grid", compute)

    def mesh(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        def compute():
            if self.planes().shape[0] != 1:
                raise ValueError("mesh extraction is defined for batch 1 only")
            grid = self.grid()
            vertices, faces = self.model.surface(self.planes(), grid.sdf[0], grid.deformation[0])
            rgb = self.model.synthesizer.rgb(self.planes(), vertices.unsqueeze(0))[0].clamp(0, 1)
            return vertices.numpy(), faces.numpy(), rgb.numpy()

        return self._once("mesh", compute)


def produce(run: MeshCaseRun, name: str) -> Any:
    if name == "encoder_tokens":
        return run.encoder_tokens()
    if name == "planes":
        return run.planes()
    if name == "query_sdf":
        return run.query()[0]
    if name == "query_deformation":
        return run.query()[1]
    if name == "query_rgb":
        return run.model.synthesizer.rgb(run.planes(), run.input("query_points"))
    if name == "grid_sdf":
        return run.grid().sdf[0]
    if name == "grid_deformation":
        return run.grid().deformation[0]
    if name == "grid_weight":
        return run.grid().weight[0]
    if name == "sdf_fix_applied":
        return torch.tensor([one_signed_interior(run.grid().sdf[0], run.model.config.grid_res)])
    raise KeyError(name)


def one_signed_interior(sdf: torch.Tensor, grid_res: int) -> bool:
    """The reference's empty-shape condition: every interior grid vertex on one side of the surface."""
    n = grid_res + 1
    interior = sdf.reshape(n, n, n)[1:-1, 1:-1, 1:-1]
    return bool((interior > 0).all() or (interior < 0).all())


MESH_OUTPUTS = ("mesh_vertices", "mesh_faces", "mesh_vertex_rgb", "mesh_vertex_colors")


def case_mesh_checks(run: MeshCaseRun, tensors: dict[str, Any]) -> list[TensorCheck]:
    case, data = run.case, run.data
    ref_vertices = data[f"{case}.mesh_vertices"].numpy()
    ref_faces = data[f"{case}.mesh_faces"].numpy()
    atol = float(tensors[f"{case}.mesh_vertices"]["tolerance"]["atol"])
    vertices, faces, rgb = run.mesh()
    checks, match = mesh_checks("", vertices, faces, ref_vertices, ref_faces, atol)
    for name in ("mesh_vertex_rgb", "mesh_vertex_colors"):
        full = f"{case}.{name}"
        if full not in data:
            continue
        if match is None:
            checks.append(TensorCheck(name, False, float("inf"), "-", "vertices did not pair"))
            continue
        order = np.argsort(match)  # ours, in the reference's vertex order
        ours = rgb[order]
        if name == "mesh_vertex_colors":
            ours = (ours.astype(np.float32) * np.float32(255)).astype(np.uint8)
        checks.append(compare(name, ours, data[full], tensors[full].get("tolerance", {})))

    # Stage-isolated: our FlexiCubes on the reference's own grid prediction.
    grid_vertices, cubes = data["grid.vertices"], data["grid.cube_indices"]
    weights = CubeWeights.from_raw(data[f"{case}.grid_weight"], FLEXICUBES_WEIGHT_SCALE)
    iso_vertices, iso_faces = flexicubes(
        grid_vertices + data[f"{case}.grid_deformation"], data[f"{case}.grid_sdf"], cubes, weights, run.model.config.grid_res
    )
    isolated, _ = mesh_checks(" [flexicubes on recorded grid]", iso_vertices.numpy(), iso_faces.numpy(), ref_vertices, ref_faces, atol)
    return checks + isolated


def check_set(set_dir: Path, *, verbose: bool = False) -> list[CaseReport]:
    set_dir = Path(set_dir)
    spec = json.loads((set_dir / "cases.json").read_text())
    set_name = json.loads((set_dir / "golden.json").read_text()).get("set", set_dir.name)
    tensors: dict[str, Any] = spec["tensors"]
    data = load_file(str(set_dir / "cases.safetensors"))
    model = load_golden_model(set_dir)
    config = model.config
    grid_vertices, cubes = regular_grid(config.grid_res, config.grid_scale)
    reports = []
    with torch.inference_mode():
        for case in spec["cases"]:
            report = CaseReport(set_name, case)
            run = MeshCaseRun(model, data, case)
            if "grid.vertices" in data:
                # One float32 ulp of slack: the lattice is rounded to 5 decimals, then shifted and scaled.
                report.add(close("grid.vertices", grid_vertices, data["grid.vertices"], atol=1e-6))
                report.add(exact("grid.cube_indices", cubes, data["grid.cube_indices"]))
            outputs = sorted(
                name for name, meta in tensors.items() if name.startswith(f"{case}.") and meta.get("role") == "output"
            )
            for full_name in outputs:
                name = full_name[len(case) + 1 :]
                if name in MESH_OUTPUTS:
                    continue
                try:
                    actual = produce(run, name)
                except KeyError:
                    report.add(TensorCheck(name, False, float("inf"), "-", "no implementation produces this tensor"))
                    continue
                report.add(compare(name, actual, data[full_name], tensors[full_name].get("tolerance", {})))
            if f"{case}.mesh_faces" in data:
                for check in case_mesh_checks(run, tensors):
                    report.add(check)
            reports.append(report)
    return reports
