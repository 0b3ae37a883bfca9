"""Issue 7 acceptance: restart semantics through the real server (subprocess).

A finished job's GLB survives a restart; a job running when the process is
SIGKILLed is failed/interrupted afterwards; the start-up sweep leaves no orphan
files; and no upload bytes ever reach the data directory. (A wrong key is
covered in test_lifecycle_http.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.lifecycle import ENGINES, ServerProcess, canary_image, data_files, find_canaries, weights_dir_for
from server.results import generate_key_text

KEY = generate_key_text()


@pytest.mark.parametrize("engine", ENGINES)
def test_restart_after_sigkill(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    data_dir = tmp_path / "data"
    env = {"LIFT3D_ENCRYPTION_KEYS": KEY}
    weights_dir = weights_dir_for(engine, request)
    image, needles = canary_image()

    first = ServerProcess(data_dir, engine, env=env, weights_dir=weights_dir).start()
    try:
        with first.client() as client:
            response = first.submit(client, image)
            assert response.status_code == 202, response.text
            done_id = response.json()["id"]
            assert first.wait_for(client, done_id, {"succeeded", "failed"})["status"] == "succeeded"
            glb = client.get(f"/v1/jobs/{done_id}/model.glb").content
            assert glb[:4] == b"glTF"

            # Many steps keep this job running long enough to kill the server under it.
            response = first.submit(client, image, steps=200, seed=2)
            assert response.status_code == 202, response.text
            killed_id = response.json()["id"]
            view = first.wait_for(client, killed_id, {"running", "succeeded", "failed"})
            assert view["status"] == "running", view
    finally:
        first.kill()

    # What a crash in the middle of writing a result would leave behind.
    results = data_dir / "results"
    (results / done_id / ".model.glb.enc.dead.partial").write_bytes(b"half a file")
    (results / "jobThatNeverFinished").mkdir()
    (results / "jobThatNeverFinished" / "model.glb.enc").write_bytes(b"orphan")

    second = ServerProcess(data_dir, engine, env=env, weights_dir=weights_dir).start()
    try:
        with second.client() as client:
            served = client.get(f"/v1/jobs/{done_id}/model.glb")
            assert served.status_code == 200 and served.content == glb
            assert client.get(f"/v1/jobs/{done_id}").json()["status"] == "succeeded"

            killed = client.get(f"/v1/jobs/{killed_id}").json()
            assert killed["status"] == "failed" and killed["error"]["code"] == "interrupted", killed
            assert client.get(f"/v1/jobs/{killed_id}/model.glb").status_code in (404, 409)
    finally:
        assert second.stop() == 0, second.log_tail()

    files = data_files(data_dir)
    assert [f for f in files if not f.startswith("jobs.sqlite3")] == [
        "lift3d.lock",
        f"results/{done_id}/model.glb.enc",
    ], files
    assert (data_dir / "lift3d.lock").stat().st_size == 0
    assert find_canaries(data_dir, needles) == []
