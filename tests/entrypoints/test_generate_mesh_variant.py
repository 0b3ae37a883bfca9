"""The FlexiCubes variant end to end in tiny mode: `lift3d generate --reconstruct-model` and the HTTP API."""

from __future__ import annotations

import time
import json
import struct
from pathlib import Path

import pytest
from litestar.testing import TestClient

from lift3d.entrypoints.cli import main
from pipeline.engine import Engine
from server.app import create_app
from tests.support.gltf_validator import assert_valid_glb
from tests.support.paths import shared_path
from tests.support.servers import make_settings, wait_until

pytestmark = pytest.mark.shared

KEY = {"Authorization": "Bearer test-key-1"}
def reconstruct_model_recorded(glb: bytes) -> str:
    """The reconstruct model named in the GLB's provenance extras."""
    length, _ = struct.unpack_from("<II", glb, 12)
    document = json.loads(glb[20 : 20 + length])
    found = [extras["models"]["reconstruct"]["model"] for extras in _all_extras(document) if "models" in extras]
    assert found, "the GLB records no reconstruct model"
    return found[0]


def _all_extras(node):  # noqa: ANN001, ANN202
    if isinstance(node, dict):
        if isinstance(node.get("extras"), dict):
            yield node["extras"]
        for value in node.values():
            yield from _all_extras(value)
    elif isinstance(node, list):
        for value in node:
            yield from _all_extras(value)


SMALL = ["--steps", "2", "--target-faces", "2000", "--texture-size", "512", "--seed", "5"]


def test_generate_with_the_mesh_variant_writes_a_valid_glb(tmp_path: Path, u2netp_weights_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LIFT3D_WEIGHTS_DIR", str(u2netp_weights_dir))
    out = tmp_path / "fruit.glb"
    photo = shared_path("images", "fruit.jpg")
    code = main(
        ["generate", str(photo), "-o", str(out), "--weights", "tiny", "--device", "cpu", "--reconstruct-model", "instant-mesh-large", *SMALL]
    )
    assert code == 0, capsys.readouterr().err
    assert_valid_glb(out.read_bytes())
    assert reconstruct_model_recorded(out.read_bytes()) == "instant-mesh-large"


def test_http_job_picks_the_mesh_variant_and_refuses_an_unloaded_one(tmp_path: Path, u2netp_weights_dir: Path) -> None:
    settings = make_settings(
        tmp_path / "data",
        engine__weights_dir=str(u2netp_weights_dir),
        engine__reconstruct__model="instant-nerf-large",
        engine__reconstruct__extra_models=["instant-mesh-large"],
    )
    app = create_app(settings, Engine(settings.engine))
    photo = shared_path("images", "fruit.jpg").read_bytes()
    with TestClient(app) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, 300)
        refused = client.post(
            "/v1/jobs", files={"image": ("f.jpg", photo, "image/jpeg")}, data={"reconstruct_model": "instant-mesh-base"}, headers=KEY
        )
        assert refused.status_code == 422 and refused.json()["code"] == "invalid_reconstruct_model", refused.text
        assert "instant-nerf-large" in refused.text and "instant-mesh-large" in refused.text

        fields = {"reconstruct_model": "instant-mesh-large", "steps": "2", "target_faces": "2000", "texture_size": "512"}
        submitted = client.post("/v1/jobs", files={"image": ("f.jpg", photo, "image/jpeg")}, data=fields, headers=KEY)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        deadline = time.monotonic() + 300
        while (job := client.get(f"/v1/jobs/{job_id}", headers=KEY).json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert job["status"] == "succeeded", job
        assert job["options"]["reconstruct_model"] == "instant-mesh-large"
        glb = client.get(f"/v1/jobs/{job_id}/model.glb", headers=KEY)
        assert glb.status_code == 200
        assert_valid_glb(glb.content)
        assert reconstruct_model_recorded(glb.content) == "instant-mesh-large"
