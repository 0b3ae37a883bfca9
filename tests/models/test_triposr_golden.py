"""TripoSR reproduces the reference's golden vectors (../shared/golden/triposr/public), and the check bites."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.golden import check_set as dispatch_check_set
from models.triposr.golden import check_set
from models.vit import Embeddings
from tests.support.paths import shared_path

pytestmark = [pytest.mark.shared, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def public_set() -> Path:
    return shared_path("golden", "triposr", "public")


def recorded_tensors(set_dir: Path, case: str) -> set[str]:
    tensors = json.loads((set_dir / "cases.json").read_text())["cases"][case]["tensors"]
    return {name.split(".", 1)[1] for name in tensors}


def failing(report) -> list[str]:  # type: ignore[no-untyped-def]
    return [f"{c.name}: {c.max_abs_err:.3g} ({c.tolerance}) {c.detail}" for c in report.checks if not c.ok]


def test_every_case_passes_on_cpu(public_set: Path) -> None:
    reports = dispatch_check_set(public_set, verbose=False)
    cases = json.loads((public_set / "cases.json").read_text())["cases"]
    assert [report.case for report in reports] == list(cases)
    for report in reports:
        assert report.ok, f"{report.case}: {failing(report)}"
        names = {check.name for check in report.checks}
        # Every recorded tensor but the inputs and the (set-compared) meshes is compared by name.
        wanted = {n for n in recorded_tensors(public_set, report.case) if not n.startswith(("raw_", "input", "mesh"))}
        assert wanted <= names
        scenes = cases[report.case]["batch"]
        assert {f"mesh{b}[counts]" for b in range(scenes)} <= names


def copy_set(public_set: Path, tmp_path: Path) -> Path:
    broken = tmp_path / "broken"
    shutil.copytree(public_set, broken)
    return broken


def test_checker_fails_when_the_decoder_is_perturbed(public_set: Path, tmp_path: Path) -> None:
    broken = copy_set(public_set, tmp_path)
    weights = load_file(str(broken / "weights.safetensors"))
    weights["decoder.layers.0.bias"] = weights["decoder.layers.0.bias"] + 1e-2
    (broken / "weights.safetensors").unlink()
    save_file(weights, str(broken / "weights.safetensors"))
    for report in check_set(broken):
        by_name = {check.name: check for check in report.checks}
        assert not report.ok
        assert not by_name["query_density_raw[from recorded scene_codes]"].ok
        assert by_name["scene_codes"].ok  # upstream of the decoder, unaffected


def test_checker_rejects_position_table_resized_to_size_instead_of_by_scale(
    public_set: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transformers-version trap: resizing the table to the target size is a different model."""

    def resize_to_size(self, num_patches: int, height: int, width: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
        table = self.position_embeddings
        side = round((table.shape[1] - 1) ** 0.5)
        grid = table[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        size = (height // self.patch_size, width // self.patch_size)
        grid = torch.nn.functional.interpolate(grid, size=size, mode="bicubic", align_corners=False)
        return torch.cat([table[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1])], dim=1)

    monkeypatch.setattr(Embeddings, "positions_for", resize_to_size)
    for report in check_set(public_set):
        by_name = {check.name: check for check in report.checks}
        assert not by_name["image_tokens"].ok and not by_name["scene_codes"].ok
        assert by_name["rgb_cond"].ok
