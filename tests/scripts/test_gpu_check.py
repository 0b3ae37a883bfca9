"""scripts/gpu_check.sh and its Python half: the GLB check and the source stamp here, the whole
CPU run (``--cpu``) as a slow test that CI runs, so the script a GPU slot depends on cannot rot."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from tests.support.paths import REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


report = _load("gpu_check_report")


def _textured_box_glb() -> bytes:
    box = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
    texture = Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8))
    uv = np.random.default_rng(0).random((len(box.vertices), 2))
    box.visual = trimesh.visual.TextureVisuals(uv=uv, image=texture)
    return box.export(file_type="glb")


def _json_chunk(data: bytes) -> tuple[dict, int]:
    length = struct.unpack_from("<I", data, 12)[0]
    return json.loads(data[20 : 20 + length]), length


def test_structural_check_passes_a_good_glb() -> None:
    result = report.structural_check(_textured_box_glb())
    assert result["ok"], result["problems"]
    assert result["faces"] == 12 and result["vertices"] > 0 and result["textures"] == [[8, 8]]


def test_structural_check_finds_an_index_past_the_vertices() -> None:
    data = bytearray(_textured_box_glb())
    document, length = _json_chunk(bytes(data))
    accessor = document["accessors"][document["meshes"][0]["primitives"][0]["indices"]]
    view = document["bufferViews"][accessor["bufferView"]]
    offset = 20 + length + 8 + view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    fmt = {5125: "<I", 5123: "<H", 5121: "<B"}[accessor["componentType"]]
    struct.pack_into(fmt, data, offset, 200)
    result = report.structural_check(bytes(data))
    assert not result["ok"] and any("past the" in p for p in result["problems"])


def test_structural_check_finds_positions_outside_their_bounds_and_garbage() -> None:
    data = _textured_box_glb()
    document, length = _json_chunk(data)
    position = document["accessors"][document["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]
    position["max"] = [0.1, 0.1, 0.1]
    text = json.dumps(document).encode()
    text += b" " * (-len(text) % 4)
    rest = data[20 + length :]
    rebuilt = struct.pack("<III", 0x46546C67, 2, 12 + 8 + len(text) + len(rest)) + struct.pack("<II", len(text), 0x4E4F534A) + text + rest
    assert any("min/max" in p for p in report.structural_check(rebuilt)["problems"])
    assert not report.structural_check(b"glTF" + bytes(40))["ok"]


def test_khronos_check_says_why_it_did_not_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(report.shutil, "which", lambda name: None)
    verdict = report.glb_check_bytes(_textured_box_glb(), tmp_path, require_khronos=False)
    assert verdict["ok"] and verdict["validator"] == "structural" and "no node" in verdict["khronos"]["reason"]
    assert not report.glb_check_bytes(_textured_box_glb(), tmp_path, require_khronos=True)["ok"]


def test_source_stamp_names_the_files_that_differ(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs this repository's git")
    report.write_source_stamp(tmp_path)
    stamp = json.loads((tmp_path / "SOURCE.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert stamp["commit"] == head and "README.md" in stamp["files"]
    # One file's recorded id changed = that file differs in this tree.
    stamp["files"]["README.md"] = "0" * 40
    (tmp_path / "SOURCE.json").write_text(json.dumps(stamp))
    compared = report.compare_with_stamp(tmp_path)
    assert compared["commit"] == head and compared["dirty"] and "README.md" in compared["differing_files"]
    assert report.git_blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"  # git hash-object


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert subprocess.run(["bash", str(SCRIPT)], capture_output=True).returncode == 2
    (tmp_path / "stale.json").write_text("{}")
    refused = subprocess.run(["bash", str(SCRIPT), "--cpu", str(tmp_path)], capture_output=True, text=True)
    assert refused.returncode == 2 and "not empty" in refused.stderr


EXPECTED_PATTERNS = ("summary.json", "summary.md", "gpu_check.log", "pipeline-*.json", "pipeline-*.md",
                     "http-*.json", "http-*.md", "model.glb")


@pytest.mark.slow
def test_cpu_mode_runs_every_step_and_leaves_the_gpu_file_set(tmp_path: Path, u2netp_weights_dir: Path) -> None:
    out = tmp_path / "out"
    completed = subprocess.run(
        ["bash", str(SCRIPT), "--cpu", str(out)], capture_output=True, text=True, timeout=900,
        env={**os.environ, "LIFT3D_WEIGHTS_DIR": str(u2netp_weights_dir)},
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 8 and all(len(list(out.glob(pattern))) == 1 for pattern in EXPECTED_PATTERNS), files
    summary = json.loads((out / "summary.json").read_text())
    steps = {step["name"]: step for step in summary["steps"]}
    assert list(steps) == ["environment", "pytest", "pipeline", "http", "generate", "validate"]
    assert summary["ok"] and all(step["passed"] and step["rc"] == 0 for step in steps.values())
    # Every GPU-marked test was collected (and skipped here, for want of CUDA).
    assert steps["pytest"]["tests"] and all(t["outcome"] == "skipped" for t in steps["pytest"]["tests"])
    if shutil.which("node"):
        assert steps["validate"]["glb"]["validator"] == "khronos+structural"
    assert steps["validate"]["glb"]["structural"]["faces"] > 0
    pipeline = json.loads(next(out.glob("pipeline-*.json")).read_text())
    assert [c["config"]["name"] for c in pipeline["configs"]] == ["baseline", "bf16-28", "bf16-28-nerf-base", "triposr"]
    assert pipeline["configs"][-1]["pipeline"] == "fast"
    assert all("error" not in c for c in pipeline["configs"]) and pipeline["environment"]["git"]["commit"]
    http = json.loads(next(out.glob("http-*.json")).read_text())
    assert [level["concurrency"] for level in http["levels"]] == [1, 4]
    assert all(level["succeeded"] > 0 for level in http["levels"])
    assert summary["source"]["commit"] == pipeline["environment"]["git"]["commit"]
    assert "| pipeline | passed |" in (out / "summary.md").read_text()
    with open(out / "model.glb", "rb") as handle:
        assert trimesh.load(io.BytesIO(handle.read()), file_type="glb", force="mesh").faces.shape[0] > 0
