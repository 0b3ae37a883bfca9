"""End to end: `lift3d serve --weights tiny --device cpu` in a subprocess, real stages, real photos.

Tiny weights are the project's small seeded random models, so the GLB is not a
real reconstruction; what this proves is the whole path: upload (multipart and
raw body), queue, every real stage, SSE to the final event, an encrypted result
served back as a GLB the Khronos validator accepts, and erasure.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.support.gltf_validator import assert_valid_glb
from tests.support.servers import REPO, free_port, subprocess_env, wait_for_http

API_KEY = "e2e-key-0123456789"
KEY = {"Authorization": f"Bearer {API_KEY}"}
# Small enough for a 2-core CPU: 2 diffusion steps, a coarse grid, the smallest texture.
JOB_OPTIONS = {"steps": "2", "seed": "11", "texture_size": "512", "target_faces": "2000"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, u2netp_weights_dir: Path) -> Iterator[str]:
    work = tmp_path_factory.mktemp("e2e")
    port = free_port()
    env = subprocess_env(
        {
            "LIFT3D_API_KEYS": API_KEY,
            "LIFT3D_DATA_DIR": str(work / "data"),
            "LIFT3D_WEIGHTS_DIR": str(u2netp_weights_dir),
            "LIFT3D_GRID_RESOLUTION": "64",
            "LIFT3D_STEPS": "2",
        }
    )
    log_path = work / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "lift3d.entrypoints.cli", "serve", "--weights", "tiny", "--device", "cpu", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_http(base_url, "/readyz", timeout=300, process=process)
        except AssertionError:
            raise AssertionError("server did not get ready:\n" + log_path.read_text()[-3000:]) from None
        yield base_url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(60) == 0, log_path.read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()


def follow_events(client: httpx.Client, job_id: str) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    name = None
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=KEY, timeout=300) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    return events


def check_job(client: httpx.Client, job_id: str) -> None:
    events = follow_events(client, job_id)
    names = [name for name, _ in events]
    assert names[-1] == "end", names
    stages = {data["stage"] for name, data in events if name == "progress"}
    assert {"multiview", "reconstruct", "finish"} <= stages, stages
    final = events[-1][1]
    assert final["status"] == "succeeded", final
    assert final["weights_mode"] == "tiny"
    assert set(final["timings"]) == {"decode", "background", "multiview", "reconstruct", "finish"}

    model = client.get(f"/v1/jobs/{job_id}/model.glb", headers=KEY)
    assert model.status_code == 200 and model.headers["content-type"] == "model/gltf-binary"
    assert len(model.content) == final["result"]["bytes"]
    assert_valid_glb(model.content)

    assert client.delete(f"/v1/jobs/{job_id}", headers=KEY).status_code == 204
    assert client.get(f"/v1/jobs/{job_id}", headers=KEY).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/model.glb", headers=KEY).status_code == 404


def test_photo_to_glb_over_http(server: str, shared_images: list[Path]) -> None:
    photos = {path.name: path for path in shared_images}
    multipart_photo = photos.get("chair.png", shared_images[0])
    raw_photo = photos.get("fruit.jpg", shared_images[-1])
    with httpx.Client(base_url=server, timeout=60) as client:
        info = client.get("/v1/info", headers=KEY).json()
        assert info["weights_mode"] == "tiny" and info["device"] == "cpu" and info["ready"]

        submitted = client.post(
            "/v1/jobs",
            files={"image": (multipart_photo.name, multipart_photo.read_bytes(), "image/png")},
            data=JOB_OPTIONS,
            headers=KEY,
        )
        assert submitted.status_code == 202, submitted.text
        check_job(client, submitted.json()["id"])

        content_type = "image/jpeg" if raw_photo.suffix.lower() in {".jpg", ".jpeg"} else "image/png"
        raw = client.post("/v1/jobs", params=JOB_OPTIONS, content=raw_photo.read_bytes(), headers={**KEY, "Content-Type": content_type})
        assert raw.status_code == 202, raw.text
        check_job(client, raw.json()["id"])

        assert 'lift3d_stage_duration_seconds_count{stage="reconstruct"}' in client.get("/metrics", headers=KEY).text
