"""The InstantMesh NeRF LRM reproduces the reference's golden vectors (../shared/golden/instantmesh/nerf)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.golden import check_set as dispatch_check_set
from models.instantmesh.golden import check_set
from tests.support.paths import shared_path

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def nerf_set() -> Path:
    return shared_path("golden", "instantmesh", "nerf")


def recorded_outputs(set_dir: Path, case: str) -> set[str]:
    tensors = json.loads((set_dir / "cases.json").read_text())["tensors"]
    return {name.split(".", 1)[1] for name, meta in tensors.items() if name.startswith(case + ".") and meta["role"] == "output"}


def test_every_nerf_case_passes_on_cpu(nerf_set: Path) -> None:
    torch.set_num_threads(2)
    reports = dispatch_check_set(nerf_set, verbose=False)
    cases = json.loads((nerf_set / "cases.json").read_text())["cases"]
    assert [report.case for report in reports] == list(cases)
    for report in reports:
        failing = [f"{c.name}: {c.max_abs_err:.3g} ({c.tolerance}) {c.detail}" for c in report.checks if not c.ok]
        assert report.ok, f"{report.case}: {failing}"
        # Every recorded output was compared (not silently skipped).
        assert recorded_outputs(nerf_set, report.case) <= {check.name for check in report.checks}


def test_checker_fails_when_the_weights_are_perturbed(nerf_set: Path, tmp_path: Path) -> None:
    """The checker detects a wrong model: one decoder bias nudged by 1e-2 must fail the query tensors."""
    broken = tmp_path / "broken"
    shutil.copytree(nerf_set, broken)
    weights = load_file(str(broken / "weights.safetensors"))
    weights["lrm_generator.synthesizer.decoder.net.6.bias"] = weights["lrm_generator.synthesizer.decoder.net.6.bias"] + 1e-2
    (broken / "weights.safetensors").unlink()
    save_file(weights, str(broken / "weights.safetensors"))
    reports = check_set(broken, verbose=False)
    assert reports and not any(report.ok for report in reports)
    for report in reports:
        by_name = {check.name: check for check in report.checks}
        assert not by_name["query_sigma_raw"].ok
        assert by_name["planes"].ok  # upstream of the decoder, unaffected
