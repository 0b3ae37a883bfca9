"""Golden check of the NeRF-variant LRM: any set folder in the InstantMesh golden format.

Builds the model from the set's ``config.json``, loads ``weights.safetensors`` by the
checkpoint rule (prefix stripped, strict), runs every case of ``cases.json`` and
compares every recorded output with the tolerance recorded for it. Outputs this
checker does not know how to produce fail the case rather than being skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file

from models.golden.compare import CaseReport, TensorCheck, close, exact, levels
from models.golden.meshes import same_mesh_unordered
from models.instantmesh.config import LRMConfig
from models.instantmesh.loading import build_empty, extract_lrm_state_dict, load_state_strict
from models.instantmesh.lrm import InstantNeRF
from models.isosurface.marching_cubes import marching_cubes_pymcubes, marching_cubes_torch

INPUTS = ("images", "cameras", "query_points")


def load_golden_model(set_dir: Path) -> tuple[InstantNeRF, LRMConfig]:
    config = LRMConfig.from_json(set_dir / "config.json")
    state, _ = extract_lrm_state_dict(load_file(str(set_dir / "weights.safetensors")))
    model = build_empty(config)
    load_state_strict(model, state)
    return model.eval(), config


def index_to_world(vertices: np.ndarray, resolution: int) -> np.ndarray:
    return vertices / (resolution - 1) * 2 - 1


class LazyCase:
    """Lazily computes the outputs of one case, each at most once (either LRM variant)."""

    def __init__(self, model: Any, data: dict[str, torch.Tensor], case: str) -> None:
        self.model, self.data, self.case = model, data, case
        self._cache: dict[str, Any] = {}

    def input(self, name: str) -> torch.Tensor:
        return self.data[f"{self.case}.{name}"]

    def _once(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def encoder_tokens(self) -> torch.Tensor:
        return self._once("tokens", lambda: self.model.encode(self.input("images"), self.input("cameras")))

    def planes(self) -> torch.Tensor:
        return self._once("planes", lambda: self.model.planes_from_tokens(self.encoder_tokens(), self.input("images").shape[0]))


class CaseRun(LazyCase):
    """A NeRF-variant case: its density grid and marching-cubes mesh follow the model config."""

    def __init__(self, model: InstantNeRF, config: LRMConfig, data: dict[str, torch.Tensor], case: str) -> None:
        super().__init__(model, data, case)
        self.config = config

    def query(self):
        return self._once("query", lambda: self.model.synthesizer.query(self.planes(), self.input("query_points")))

    def density_grid(self) -> torch.Tensor:
        return self._once("grid", lambda: self.model.synthesizer.density_grid(self.planes(), self.config.mesh_resolution))

    def mesh(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The reference's extract_mesh path: PyMCubes on our grid, then colours at the float32 vertices."""

        def compute():
            if self.planes().shape[0] != 1:
                raise ValueError("mesh extraction is defined for batch 1 only")
            grid = self.density_grid()[0].numpy()
            vertices, faces = marching_cubes_pymcubes(grid, self.config.mesh_threshold)
            vertices = index_to_world(vertices, self.config.mesh_resolution)
            points = torch.from_numpy(vertices).float().unsqueeze(0)
            rgb = self.model.synthesizer.rgb(self.planes(), points)[0].numpy()
            return vertices, faces, rgb

        return self._once("mesh", compute)


def produce(run: CaseRun, name: str) -> Any:
    if name == "encoder_tokens":
        return run.encoder_tokens()
    if name == "planes":
        return run.planes()
    if name == "query_sigma":
        return run.query().sigma
    if name == "query_sigma_raw":
        return run.query().sigma_raw
    if name == "query_rgb":
        return run.query().rgb
    if name == "density_grid":
        return run.density_grid().reshape(run.data[f"{run.case}.density_grid"].shape)
    if name == "mesh_vertices":
        return run.mesh()[0]
    if name == "mesh_faces":
        return run.mesh()[1]
    if name == "mesh_vertex_rgb":
        return run.mesh()[2]
    if name == "mesh_vertex_colors":
        # Truncating cast of rgb * 255 in float32, as the reference does (its NeRF path does not clamp).
        return (run.mesh()[2].astype(np.float32) * np.float32(255)).astype(np.uint8)
    raise KeyError(name)


def compare(name: str, actual: Any, expected: torch.Tensor, tolerance: dict[str, Any]) -> TensorCheck:
    if tolerance.get("exact"):
        return exact(name, actual, expected)
    if "max_abs_diff" in tolerance:
        return levels(name, actual, expected, max_abs=int(tolerance["max_abs_diff"]), max_fraction=1.0)
    return close(name, actual, expected, atol=float(tolerance.get("atol", 0.0)), rtol=float(tolerance.get("rtol", 0.0)))


def mesh_cross_checks(run: CaseRun, tensors: dict[str, Any]) -> list[TensorCheck]:
    """Stage-isolated checks on the recorded grid: PyMCubes exactly, and our torch marching cubes unordered."""
    grid = run.data[f"{run.case}.density_grid"]
    ref_vertices = run.data[f"{run.case}.mesh_vertices"].numpy()
    ref_faces = run.data[f"{run.case}.mesh_faces"].numpy()
    resolution, level = grid.shape[-1], run.config.mesh_threshold
    atol = float(tensors[f"{run.case}.mesh_vertices"]["tolerance"].get("atol", 5e-4))
    vertices, faces = marching_cubes_pymcubes(grid.numpy(), level)
    checks = [
        close("mesh_vertices[pymcubes on recorded grid]", index_to_world(vertices, resolution), ref_vertices, atol=atol),
        exact("mesh_faces[pymcubes on recorded grid]", faces, ref_faces),
    ]
    t_vertices, t_faces = marching_cubes_torch(grid, level)
    ref_index = (ref_vertices + 1) / 2 * (resolution - 1)
    checks.append(
        same_mesh_unordered(
            "mesh[torch marching cubes on recorded grid]",
            t_vertices.numpy(),
            t_faces.numpy(),
            ref_index,
            ref_faces,
            grid_shape=tuple(grid.shape),
            atol=atol * (resolution - 1) / 2,
        )
    )
    return checks


def check_set(set_dir: Path, *, verbose: bool = False) -> list[CaseReport]:
    set_dir = Path(set_dir)
    spec = json.loads((set_dir / "cases.json").read_text())
    set_name = json.loads((set_dir / "golden.json").read_text()).get("set", set_dir.name)
    tensors: dict[str, Any] = spec["tensors"]
    data = load_file(str(set_dir / "cases.safetensors"))
    model, config = load_golden_model(set_dir)
    reports = []
    with torch.inference_mode():
        for case in spec["cases"]:
            report = CaseReport(set_name, case)
            run = CaseRun(model, config, data, case)
            outputs = sorted(
                name for name, meta in tensors.items() if name.startswith(f"{case}.") and meta.get("role") == "output"
            )
            for full_name in outputs:
                name = full_name[len(case) + 1 :]
                try:
                    actual = produce(run, name)
                except KeyError:
                    report.add(TensorCheck(name, False, float("inf"), "-", "no implementation produces this tensor"))
                    continue
                report.add(compare(name, actual, data[full_name], tensors[full_name].get("tolerance", {})))
            if f"{case}.density_grid" in data and f"{case}.mesh_faces" in data:
                for check in mesh_cross_checks(run, tensors):
                    report.add(check)
            reports.append(report)
    return reports
