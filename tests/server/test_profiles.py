"""Server profiles (fast|quality|all) and the licence report: what is loaded, what is refused, what is named."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from litestar.testing import TestClient

from lift3d.errors import PipelineNotLoaded
from lift3d.weights.catalog import TRIPOSR_CHECKPOINT, TRIPOSR_CONFIG, rembg_path
from server.app import create_app
from server.submission import parse_submission
from tests.support.gltf_validator import assert_valid_glb
from tests.support.servers import BoxFinishStage, TimedStage, fake_engine, make_settings, small_png, wait_until

KEY = {"Authorization": "Bearer test-key-1"}
NON_COMMERCIAL = "CC-BY-NC-4.0"


def _client(app) -> TestClient:  # noqa: ANN001
    client = TestClient(app)
    client.__enter__()
    wait_until(lambda: client.get("/readyz").status_code == 200, 60)
    return client


def _submit(client: TestClient, **fields: Any):  # noqa: ANN202
    form = {k: str(v) for k, v in fields.items()}
    return client.post("/v1/jobs", files={"image": ("p.png", small_png(size=96), "image/png")}, data=form, headers=KEY)


def _wait(client: TestClient, job_id: str) -> dict[str, Any]:
    ended = {"succeeded", "failed", "cancelled", "expired"}
    return wait_until(lambda: (j := client.get(f"/v1/jobs/{job_id}", headers=KEY).json())["status"] in ended and j, 120)


@pytest.fixture(scope="module")
def fast_client(tmp_path_factory, u2netp_weights_dir) -> Iterator[TestClient]:  # noqa: ANN001
    data = tmp_path_factory.mktemp("fast")
    settings = make_settings(data / "data", engine__profile="fast", engine__weights_dir=str(u2netp_weights_dir))
    client = _client(create_app(settings))  # the real engine, tiny weights
    try:
        yield client
    finally:
        client.__exit__(None, None, None)


def test_a_fast_server_refuses_multiview_with_422_naming_the_loaded_pipelines(fast_client: TestClient) -> None:
    refused = _submit(fast_client, pipeline="multiview")
    assert refused.status_code == 422
    body = refused.json()
    assert body["code"] == "pipeline_not_loaded" and body["loaded_pipelines"] == ["fast"]
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert _submit(fast_client, pipeline="quality").json()["code"] == "invalid_pipeline"


def test_pipeline_fast_over_http_gives_a_valid_textured_glb_and_a_commercial_licence_report(fast_client: TestClient) -> None:
    accepted = _submit(fast_client, pipeline="fast", remove_background="off", target_faces=1000, texture_size=512, seed=5)
    assert accepted.status_code == 202, accepted.text
    job = _wait(fast_client, accepted.json()["id"])
    assert job["status"] == "succeeded", job
    assert set(job["timings"]) == {"decode", "background", "reconstruct", "finish"}
    result = job["result"]
    assert result["pipeline"] == "fast" and result["texture"] == "uv"
    paths = {row["path"] for row in result["artifacts"]}
    assert {rembg_path("u2netp"), TRIPOSR_CHECKPOINT, TRIPOSR_CONFIG} == paths
    assert all(row["commercial_use"] and row["licence"] != NON_COMMERCIAL for row in result["artifacts"])

    glb = fast_client.get(f"/v1/jobs/{job['id']}/model.glb", headers=KEY)
    assert glb.status_code == 200
    assert_valid_glb(glb.content)


def test_info_on_a_fast_server_names_only_commercially_usable_artifacts(fast_client: TestClient) -> None:
    info = fast_client.get("/v1/info", headers=KEY).json()
    assert info["server_profile"] == "fast"
    assert [p["name"] for p in info["pipelines"]] == ["fast"]
    fast = info["pipelines"][0]
    assert fast["default"] and fast["commercial_use"]
    assert {a["path"] for a in fast["artifacts"]} >= {TRIPOSR_CHECKPOINT}
    licences = [a["licence"] for a in fast["artifacts"]] + [m["license"] for m in info["models"]]
    assert licences and NON_COMMERCIAL not in licences
    assert all(a["use"] == "architecture only (tiny weights)" for a in fast["artifacts"] if a["path"] == TRIPOSR_CHECKPOINT)


@pytest.fixture()
def multiview_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path / "data")
    client = _client(create_app(settings, fake_engine(settings, TimedStage(0.001), BoxFinishStage())))
    try:
        yield client
    finally:
        client.__exit__(None, None, None)


def test_the_multiview_pipeline_names_its_non_commercial_artifacts(multiview_client: TestClient) -> None:
    info = multiview_client.get("/v1/info", headers=KEY).json()
    assert info["server_profile"] == "quality" and [p["name"] for p in info["pipelines"]] == ["multiview"]
    multiview = info["pipelines"][0]
    assert not multiview["commercial_use"]
    named = {a["path"] for a in multiview["artifacts"] if a["licence"] == NON_COMMERCIAL}
    assert "TencentARC/InstantMesh/diffusion_pytorch_model.safetensors" in named
    assert any(path.startswith("sudo-ai/zero123plus-v1.2/") for path in named)

    refused = _submit(multiview_client, pipeline="fast")
    assert refused.status_code == 422 and refused.json()["loaded_pipelines"] == ["multiview"]

    job = _wait(multiview_client, _submit(multiview_client, steps=1).json()["id"])
    assert job["status"] == "succeeded" and job["result"]["pipeline"] == "multiview"
    assert {row["licence"] for row in job["result"]["artifacts"]} >= {NON_COMMERCIAL, "Apache-2.0"}


# -- locked mode: what `serve --profile P` demands of the weights directory -----------------


def _fake_weights(root: Path, paths: list[str]) -> Path:
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"stand-in")
    return root


def test_serve_profile_fast_starts_with_only_the_fast_weights_and_refuses_multiview(tmp_path, monkeypatch, capsys) -> None:
    from lift3d.entrypoints.cli import main
    import server.main

    weights = _fake_weights(tmp_path / "weights", [rembg_path("u2netp"), TRIPOSR_CHECKPOINT, TRIPOSR_CONFIG])
    started: dict[str, Any] = {}

    def fake_run(self) -> None:  # noqa: ANN001 - stands in for uvicorn: the app is built, nothing listens
        started["app"] = self.config.app
        self.started = True

    monkeypatch.setattr(server.main.DrainingServer, "run", fake_run)
    base = ["serve", "--weights", "locked", "--device", "cpu", "--weights-dir", str(weights), "--port", "0"]

    assert main([*base, "--profile", "fast", "--data-dir", str(tmp_path / "a")]) == 0
    services = started["app"].state.services
    assert list(services.manager.engine.pipelines) == ["fast"]
    assert {m.name for m in services.models} == {rembg_path("u2netp"), TRIPOSR_CHECKPOINT, TRIPOSR_CONFIG}
    with pytest.raises(PipelineNotLoaded):
        parse_submission({"pipeline": "multiview"}, services.settings)

    # The same directory is not enough for the multiview pipeline: the server stays up (a pod
    # never restart-loops) but its weights step refuses before anything loads, naming the pull.
    from lift3d.errors import WeightsMissing
    from lift3d.settings import load_settings
    from server.weights_gate import weights_step

    def settings_for(profile: str):
        return load_settings(
            engine__weights="locked", engine__profile=profile, engine__device="cpu", engine__weights_dir=str(weights)
        )

    assert weights_step(settings_for("fast")) is None
    for profile in ("quality", "all"):
        step = weights_step(settings_for(profile))
        assert step is not None
        with pytest.raises(WeightsMissing) as refused:
            step(lambda phase: None)
        assert f"lift3d weights pull --profile {profile}" in refused.value.message
