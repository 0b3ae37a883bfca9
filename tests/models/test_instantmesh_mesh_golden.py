"""The InstantMesh mesh (FlexiCubes) LRM reproduces the reference's golden vectors (../shared/golden/instantmesh/mesh)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.golden import check_set as dispatch_check_set
from models.instantmesh.golden_mesh import check_set
from tests.support.paths import shared_path

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def mesh_set() -> Path:
    return shared_path("golden", "instantmesh", "mesh")


def recorded_outputs(set_dir: Path, case: str) -> set[str]:
    tensors = json.loads((set_dir / "cases.json").read_text())["tensors"]
    return {name.split(".", 1)[1] for name, meta in tensors.items() if name.startswith(case + ".") and meta["role"] == "output"}


def test_every_mesh_case_passes_on_cpu(mesh_set: Path) -> None:
    torch.set_num_threads(2)
    reports = dispatch_check_set(mesh_set, verbose=False)
    cases = json.loads((mesh_set / "cases.json").read_text())["cases"]
    assert [report.case for report in reports] == list(cases)
    for report in reports:
        failing = [f"{c.name}: {c.max_abs_err:.3g} ({c.tolerance}) {c.detail}" for c in report.checks if not c.ok]
        assert report.ok, f"{report.case}: {failing}"
        names = {check.name for check in report.checks}
        assert recorded_outputs(mesh_set, report.case) <= names  # nothing recorded was skipped
        if "mesh_faces" in recorded_outputs(mesh_set, report.case):
            assert {"mesh_winding", "mesh_faces [flexicubes on recorded grid]"} <= names


def test_checker_fails_when_the_weight_head_is_perturbed(mesh_set: Path, tmp_path: Path) -> None:
    """A nudged net_weight bias must fail grid_weight (and only the weight path: planes stay equal)."""
    broken = tmp_path / "broken"
    shutil.copytree(mesh_set, broken)
    weights = load_file(str(broken / "weights.safetensors"))
    key = "lrm_generator.synthesizer.decoder.net_weight.6.bias"
    weights[key] = weights[key] + 0.5
    (broken / "weights.safetensors").unlink()
    save_file(weights, str(broken / "weights.safetensors"))
    reports = [report for report in check_set(broken) if report.case in ("v6", "v4")]
    assert reports and not any(report.ok for report in reports)
    for report in reports:
        by_name = {check.name: check for check in report.checks}
        assert not by_name["grid_weight"].ok
        assert by_name["planes"].ok and by_name["grid_sdf"].ok
        assert by_name["mesh_faces [flexicubes on recorded grid]"].ok  # the isolated extraction is unaffected


def test_checker_fails_when_the_recorded_faces_change(mesh_set: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(mesh_set, broken)
    data = load_file(str(broken / "cases.safetensors"))
    faces = data["v6.mesh_faces"].clone()
    faces[0] = faces[0].flip(0)  # one triangle wound the other way
    data["v6.mesh_faces"] = faces
    (broken / "cases.safetensors").unlink()
    save_file(data, str(broken / "cases.safetensors"))
    v6 = next(report for report in check_set(broken) if report.case == "v6")
    by_name = {check.name: check for check in v6.checks}
    assert by_name["mesh_faces"].ok and not by_name["mesh_winding"].ok


def test_check_golden_script_passes_the_mesh_folder(mesh_set: Path, capsys) -> None:
    from scripts.check_golden import main

    assert main([str(mesh_set)]) == 0
    lines = capsys.readouterr().out.splitlines()
    cases = json.loads((mesh_set / "cases.json").read_text())["cases"]
    assert sum(line.startswith("PASS instantmesh-mesh/") for line in lines) == len(cases)


def write_set(folder: Path, config: dict, model, cases: dict[str, dict[str, torch.Tensor]], tensors: dict) -> None:
    folder.mkdir()
    (folder / "golden.json").write_text(json.dumps({"model": "instantmesh-mesh", "set": folder.name}))
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"lrm_generator." + k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "weights.safetensors"))
    flat = {f"{case}.{name}": value.contiguous() for case, values in cases.items() for name, value in values.items()}
    save_file(flat, str(folder / "cases.safetensors"))
    (folder / "cases.json").write_text(json.dumps({"cases": {case: {} for case in cases}, "tensors": tensors}))


def test_sizes_and_grid_come_from_the_set(mesh_set: Path, tmp_path: Path) -> None:
    """A set in the same format with other sizes (patch 16, 96-pixel views, grid 12 at scale 2.0): the checker
    builds everything from its config. Recorded here from our own model, so it proves generality, not
    equality; changing the set's grid_scale must then fail the grid and mesh checks."""
    from models.instantmesh.config import LRMConfig
    from models.instantmesh.loading import build_random

    config = json.loads((mesh_set / "config.json").read_text())
    config["vit_config"].update(patch_size=16, image_size=64, hidden_size=32, intermediate_size=64)
    config["model_config"]["params"].update(encoder_feat_dim=32, grid_res=12, grid_scale=2.0, triplane_low_res=3)
    model = build_random(LRMConfig.from_dict(config), seed=5).eval()
    generator = torch.Generator().manual_seed(9)
    images = torch.rand(1, 6, 3, 96, 96, generator=generator)
    from models.instantmesh.cameras import zero123plus_cameras

    cameras = zero123plus_cameras(1)
    with torch.inference_mode():
        planes = model.forward_planes(images, cameras)
        vertices, cubes = model.flexicubes_grid("cpu")
        grid = model.synthesizer.grid_prediction(planes, vertices, cubes, 12)
        # Give the random sdf a surface the way the public set's weights were tuned: shift the output bias.
        model.synthesizer.decoder.net_sdf[6].bias -= grid.sdf[0].median()
        grid = model.synthesizer.grid_prediction(planes, vertices, cubes, 12)
        sdf = grid.sdf[0]
        mesh_vertices, faces = model.surface(planes, sdf, grid.deformation[0])
    assert len(faces) > 0
    values = {
        "images": images, "cameras": cameras, "planes": planes, "grid_sdf": sdf,
        "grid_deformation": grid.deformation[0], "grid_weight": grid.weight[0],
        "mesh_vertices": mesh_vertices, "mesh_faces": faces,
    }
    close = {"atol": 1e-5, "rtol": 1e-5}
    tensors = {f"v6.{name}": {"role": "input"} for name in ("images", "cameras")}
    tensors.update({f"v6.{name}": {"role": "output", "tolerance": close} for name in ("planes", "grid_deformation", "grid_weight")})
    tensors["v6.mesh_vertices"] = {"role": "output", "tolerance": {"atol": 5e-4}}
    tensors["v6.mesh_faces"] = {"role": "output", "tolerance": {"exact": True}}
    cases = {"v6": values}
    constants = {"grid.vertices": vertices, "grid.cube_indices": cubes}
    good = tmp_path / "other-sizes"
    write_set(good, config, model, cases, tensors)
    data = load_file(str(good / "cases.safetensors"))
    save_file({**data, **constants}, str(good / "cases.safetensors"))
    (report,) = check_set(good)
    assert report.ok, [c for c in report.checks if not c.ok]
    assert {"mesh_faces", "mesh_faces [flexicubes on recorded grid]"} <= {c.name for c in report.checks}

    config["model_config"]["params"]["grid_scale"] = 2.1
    (good / "config.json").write_text(json.dumps(config))
    (report,) = check_set(good)
    by_name = {check.name: check for check in report.checks}
    assert not by_name["grid.vertices"].ok and not by_name["mesh_vertices"].ok
