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
