"""Golden check of TripoSR: any set folder in the TripoSR golden format.

Builds the model from the set's ``config.json``, loads ``weights.safetensors`` strictly
(flat, as the released checkpoint), rebuilds each case's inputs from its raw arrays
and recorded parameters, and compares every recorded tensor with its recorded
tolerance (``max absolute error`` or ``max relative error``; untoleranced uint8
preprocessing outputs must be equal). Each network stage is also run from the
previous stage's recorded tensor (names ending in ``[from recorded ...]``), so a
mismatch points at its stage.

Meshes are informational in these sets (PyMCubes stood in for torchmcubes), so they
are compared as the set's README prescribes rather than element-wise: marching cubes
on the recorded grid must give the recorded mesh as a set (same triangles, vertices
within ``MESH_VERTEX_ATOL``); the end-to-end mesh must have vertex and face counts
within ``MESH_COUNT_FRACTION`` of the recorded ones and every vertex on the recorded
grid's iso-surface (linear interpolation) within the recorded 4e-5 plus the grid's
own tolerance; vertex colours (RGBA uint8, as trimesh stores them) within one level.
Tensors this checker cannot produce fail the case rather than being skipped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file
from scipy.interpolate import RegularGridInterpolator
from scipy.spatial import cKDTree

from lift3d.errors import EmptyReconstruction
from models.checkpoints import load_state_strict
from models.golden.compare import CaseReport, TensorCheck, close, exact, levels, relative
from models.golden.meshes import same_mesh_unordered
from models.isosurface.marching_cubes import marching_cubes_pymcubes
from models.triposr.config import TripoSRConfig
from models.triposr.loading import build_empty
from models.triposr.mesh import TriplaneMesh, extract_mesh
from models.triposr.model import TripoSR
from models.triposr.preprocess import composite_on_gray, frame_foreground
from models.triposr.render import render_views

INPUT_NAME = re.compile(r"^(raw_rgba|input\d+_rgb)$")
MESH_NAME = re.compile(r"^mesh(\d+)_(vertices|faces|vertex_colors_u8)$")
MESH_VERTEX_ATOL = 1e-5  # world units, marching cubes on the recorded grid
MESH_COUNT_FRACTION = 0.02
MESH_ISO_RTOL = 4e-5  # the README's bound for the recorded vertices on the recorded grid
NETWORK_OUTPUTS = ("image_tokens", "backbone_tokens", "scene_codes")
QUERY_OUTPUTS = ("query_density_raw", "query_density", "query_features_raw", "query_rgb")


def load_golden_model(set_dir: Path) -> tuple[TripoSR, TripoSRConfig]:
    config = TripoSRConfig.from_json(set_dir / "config.json")
    model = build_empty(config)
    load_state_strict(model, load_file(str(set_dir / "weights.safetensors")))
    return model.eval(), config


def trimesh_rgba(rgb: np.ndarray) -> np.ndarray:
    """Float colours in [0, 1] -> RGBA uint8 the way trimesh stores vertex colours (clipped, rounded, opaque)."""
    rgb8 = np.clip(np.asarray(rgb, dtype=np.float64) * 255, 0, 255).round().astype(np.uint8)
    return np.concatenate([rgb8, np.full((len(rgb8), 1), 255, dtype=np.uint8)], axis=1)


class CaseRun:
    """Lazily computes the outputs of one case, each at most once."""

    def __init__(
        self, model: TripoSR, config: TripoSRConfig, data: dict[str, torch.Tensor], name: str, spec: dict[str, Any]
    ) -> None:
        self.model, self.config, self.data, self.name, self.spec = model, config, data, name, spec
        self._cache: dict[str, Any] = {}

    def recorded(self, tensor: str) -> torch.Tensor:
        return self.data[f"{self.name}.{tensor}"]

    def _once(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    # ---------------------------------------------------------------- preprocessing
    def preprocessing(self) -> dict[str, Any]:
        return self.spec.get("call", {}).get("preprocessing", {})

    def fg_rgba(self) -> np.ndarray:
        ratio = float(self.preprocessing()["foreground_ratio"])
        return self._once("fg", lambda: frame_foreground(self.recorded("raw_rgba").numpy(), ratio))

    def composited_rgb(self) -> np.ndarray:
        options = self.preprocessing()
        if options.get("uint8_conversion", "truncate").split()[0] != "truncate":
            raise KeyError("composited_rgb")  # only the reference's truncating cast exists
        gray = float(options.get("background_gray", 0.5))
        return self._once("composited", lambda: composite_on_gray(self.fg_rgba(), gray))

    def system_inputs(self) -> list[np.ndarray]:
        if f"{self.name}.raw_rgba" in self.data:
            return [self.composited_rgb()]
        count = sum(1 for key in self.data if re.fullmatch(rf"{re.escape(self.name)}\.input\d+_rgb", key))
        if count == 0:
            raise KeyError("inputs")
        return [self.recorded(f"input{i}_rgb").numpy() for i in range(count)]

    def rgb_cond(self) -> torch.Tensor:
        return self._once("rgb_cond", lambda: self.model.preprocess(self.system_inputs()))

    # ---------------------------------------------------------------- network, end to end and per stage
    def image_tokens(self, recorded_input: bool = False) -> torch.Tensor:
        source = self.recorded("rgb_cond") if recorded_input else self.rgb_cond()
        return self._once(f"tokens{recorded_input}", lambda: self.model.image_tokens(source))

    def backbone_tokens(self, recorded_input: bool = False) -> torch.Tensor:
        source = self.recorded("image_tokens") if recorded_input else self.image_tokens()
        return self._once(f"backbone{recorded_input}", lambda: self.model.backbone_tokens(source))

    def scene_codes(self, recorded_input: bool = False) -> torch.Tensor:
        source = self.recorded("backbone_tokens") if recorded_input else self.backbone_tokens()
        return self._once(f"codes{recorded_input}", lambda: self.model.scene_codes_from_tokens(source))

    def codes_for(self, recorded_input: bool) -> torch.Tensor:
        return self.recorded("scene_codes") if recorded_input else self.scene_codes()

    def query(self, recorded_input: bool = False):
        def compute():
            points_key = self.spec.get("query", {}).get("points_key", "query_points")
            codes = self.codes_for(recorded_input)
            points = self.data[points_key].expand(codes.shape[0], -1, -1)
            return self.model.field.query(codes, points)

        return self._once(f"query{recorded_input}", compute)

    def density_grid(self, recorded_input: bool = False) -> torch.Tensor:
        grid_spec = self.spec["density_grid"]
        if abs(float(grid_spec.get("radius", self.config.radius)) - self.config.radius) > 1e-9:
            raise ValueError(f"case radius {grid_spec['radius']} differs from the config's {self.config.radius}")
        resolution = int(grid_spec["resolution"])
        return self._once(
            f"grid{recorded_input}", lambda: self.model.field.density_grid(self.codes_for(recorded_input), resolution)
        )

    def render(self, recorded_input: bool = False) -> torch.Tensor:
        options = self.spec["render"]

        def compute():
            return render_views(
                self.model.field,
                self.codes_for(recorded_input),
                n_views=int(options["n_views"]),
                samples=self.config.samples_per_ray,
                elevation_deg=float(options["elevation_deg"]),
                camera_distance=float(options["camera_distance"]),
                fovy_deg=float(options["fovy_deg"]),
                height=int(options["height"]),
                width=int(options["width"]),
            )

        return self._once(f"render{recorded_input}", compute)


def produce(run: CaseRun, name: str, recorded_input: bool = False) -> Any:
    if name == "fg_rgba":
        return run.fg_rgba()
    if name == "composited_rgb":
        return run.composited_rgb()
    if name == "rgb_cond":
        return run.rgb_cond()
    if name == "image_tokens":
        return run.image_tokens(recorded_input)
    if name == "backbone_tokens":
        return run.backbone_tokens(recorded_input)
    if name == "scene_codes":
        return run.scene_codes(recorded_input)
    if name in QUERY_OUTPUTS:
        sample = run.query(recorded_input)
        field = {"query_density_raw": "density_raw", "query_density": "density", "query_features_raw": "features_raw"}
        return getattr(sample, field.get(name, "rgb"))
    if name == "density_grid":
        return run.density_grid(recorded_input)
    if name == "render_rgb":
        return run.render(recorded_input)
    raise KeyError(name)


RECORDED_SOURCE = {
    "image_tokens": "rgb_cond",
    "backbone_tokens": "image_tokens",
    "scene_codes": "backbone_tokens",
    **{name: "scene_codes" for name in (*QUERY_OUTPUTS, "density_grid", "render_rgb")},
}


def compare(name: str, actual: Any, expected: torch.Tensor, meta: dict[str, Any]) -> TensorCheck:
    tolerance = meta.get("tolerance")
    if tolerance is None:
        return exact(name, actual, expected)
    metric, value = str(tolerance["metric"]), float(tolerance["value"])
    if "relative" in metric:
        return relative(name, actual, expected, rtol=value)
    if "absolute" in metric:
        return close(name, actual, expected, atol=value)
    return TensorCheck(name, False, float("inf"), metric, "unknown tolerance metric")


def mesh_checks(run: CaseRun, scene: int, grid_tolerance: float) -> list[TensorCheck]:
    mesh_spec = run.spec["mesh"]
    threshold, resolution = float(mesh_spec["threshold"]), int(mesh_spec["resolution"])
    radius = run.config.radius
    ref_vertices = run.recorded(f"mesh{scene}_vertices").numpy().astype(np.float64)
    ref_faces = run.recorded(f"mesh{scene}_faces").numpy().astype(np.int64)
    colors_key = f"{run.name}.mesh{scene}_vertex_colors_u8"
    ref_colors = run.data[colors_key].numpy() if colors_key in run.data else None
    prefix = f"mesh{scene}"
    checks = []

    recorded_grid = run.recorded("density_grid")[scene] if f"{run.name}.density_grid" in run.data else None
    if recorded_grid is not None and recorded_grid.shape[-1] != resolution:
        recorded_grid = None  # a grid of another resolution says nothing about this mesh
    if recorded_grid is not None:
        # Stage-isolated: our marching cubes and index->world mapping on the recorded grid.
        vertices, faces = marching_cubes_pymcubes(recorded_grid.numpy(), threshold)
        name = f"{prefix}[marching cubes on recorded grid]"
        world = run.model.field.grid_to_world(torch.from_numpy(vertices), resolution).numpy()
        check = same_mesh_in_order(name, world, faces, ref_vertices, ref_faces)
        if not check.ok:
            # Another marching cubes may order vertices and triangles differently: compare as sets.
            to_index = (resolution - 1) / (2 * radius)
            check = same_mesh_unordered(
                name,
                vertices,
                faces,
                (ref_vertices + radius) * to_index,
                ref_faces,
                grid_shape=tuple(recorded_grid.shape),
                atol=MESH_VERTEX_ATOL * to_index,
            )
        checks.append(check)
    if ref_colors is not None:
        # Colours at the recorded vertices from the recorded scene code.
        codes = run.recorded("scene_codes")[scene : scene + 1]
        rgb = run.model.field.rgb(codes, torch.from_numpy(ref_vertices).float()[None])[0].numpy()
        checks.append(colour_check(f"{prefix}_vertex_colors_u8[from recorded scene_codes]", rgb, ref_colors))

    # End to end: our grid, our marching cubes, our colours.
    try:
        mesh = extract_mesh(run.model.field, run.scene_codes()[scene], resolution=resolution, threshold=threshold)
    except EmptyReconstruction:  # a recorded empty mesh is a valid record
        mesh = TriplaneMesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64), np.zeros((0, 3), np.float32), "-")
    count_detail = f"{len(mesh.vertices)}/{len(mesh.faces)} vs recorded {len(ref_vertices)}/{len(ref_faces)}"
    off = max(
        abs(len(mesh.vertices) - len(ref_vertices)) / max(len(ref_vertices), 1),
        abs(len(mesh.faces) - len(ref_faces)) / max(len(ref_faces), 1),
    )
    counts_ok = off <= MESH_COUNT_FRACTION
    checks.append(TensorCheck(f"{prefix}[counts]", counts_ok, off, f"rel<={MESH_COUNT_FRACTION:g}", count_detail))
    if recorded_grid is not None:
        axis = np.linspace(0.0, 1.0, recorded_grid.shape[-1]) * 2 * radius - radius
        # Outside the grid's last sample by float32 rounding only: extrapolate rather than refuse.
        interpolate = RegularGridInterpolator(
            (axis, axis, axis), recorded_grid.double().numpy(), bounds_error=False, fill_value=None
        )
        iso_error = float(np.abs(interpolate(mesh.vertices.astype(np.float64)) / threshold - 1).max())
        bound = MESH_ISO_RTOL + grid_tolerance
        checks.append(
            TensorCheck(f"{prefix}_vertices[on recorded iso-surface]", iso_error <= bound, iso_error, f"rel<={bound:g}")
        )
    if ref_colors is not None and len(ref_vertices) and len(mesh.vertices):
        nearest = cKDTree(ref_vertices).query(mesh.vertices.astype(np.float64))[1]
        name = f"{prefix}_vertex_colors_u8[end to end, nearest vertex]"
        checks.append(colour_check(name, mesh.vertex_colors, ref_colors[nearest]))
    return checks


def same_mesh_in_order(
    name: str, vertices: np.ndarray, faces: np.ndarray, ref_vertices: np.ndarray, ref_faces: np.ndarray
) -> TensorCheck:
    """Same vertices (world, within ``MESH_VERTEX_ATOL``) and the same triangles, in the same order."""
    tolerance = f"in order atol={MESH_VERTEX_ATOL:g}"
    if vertices.shape != ref_vertices.shape or faces.shape != ref_faces.shape:
        detail = f"counts {len(vertices)}/{len(faces)} vs {len(ref_vertices)}/{len(ref_faces)}"
        return TensorCheck(name, False, float("inf"), tolerance, detail)
    error = float(np.abs(vertices - ref_vertices).max()) if len(vertices) else 0.0
    same_faces = bool(np.array_equal(faces, ref_faces))
    ok = same_faces and error <= MESH_VERTEX_ATOL
    return TensorCheck(name, ok, error, tolerance, "" if same_faces else "faces differ")


def colour_check(name: str, rgb: np.ndarray, reference_rgba: np.ndarray) -> TensorCheck:
    """Within one level (rounding at a half level), on at most 1% of the values."""
    return levels(name, trimesh_rgba(rgb), reference_rgba, max_abs=1, max_fraction=0.01)


def check_case(
    model: TripoSR, config: TripoSRConfig, data: dict[str, torch.Tensor], name: str, spec: dict[str, Any], set_name: str
) -> CaseReport:
    report = CaseReport(set_name, name)
    run = CaseRun(model, config, data, name, spec)
    tensors: dict[str, Any] = spec["tensors"]
    scenes: set[int] = set()
    for full_name, meta in tensors.items():
        short = full_name[len(name) + 1 :]
        if INPUT_NAME.match(short):
            continue
        if match := MESH_NAME.match(short):
            scenes.add(int(match.group(1)))
            continue
        try:
            report.add(compare(short, produce(run, short), data[full_name], meta))
            if short in RECORDED_SOURCE and f"{name}.{RECORDED_SOURCE[short]}" in data:
                isolated = f"{short}[from recorded {RECORDED_SOURCE[short]}]"
                report.add(compare(isolated, produce(run, short, recorded_input=True), data[full_name], meta))
        except KeyError as missing:
            report.add(TensorCheck(short, False, float("inf"), "-", f"no implementation produces this tensor ({missing})"))
    grid_meta = tensors.get(f"{name}.density_grid", {}).get("tolerance", {})
    for scene in sorted(scenes):
        try:
            checks = mesh_checks(run, scene, float(grid_meta.get("value", 0.0)))
        except KeyError as missing:
            checks = [TensorCheck(f"mesh{scene}", False, float("inf"), "-", f"mesh record incomplete ({missing})")]
        for check in checks:
            report.add(check)
    return report


def check_set(set_dir: Path, *, verbose: bool = False) -> list[CaseReport]:
    set_dir = Path(set_dir)
    spec = json.loads((set_dir / "cases.json").read_text())
    set_name = json.loads((set_dir / "golden.json").read_text()).get("set", set_dir.name)
    data = load_file(str(set_dir / "cases.safetensors"))
    model, config = load_golden_model(set_dir)
    with torch.inference_mode():
        return [check_case(model, config, data, name, case, set_name) for name, case in spec["cases"].items()]
