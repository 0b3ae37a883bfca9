"""The real server process (uvicorn, fake engine) through a full disk, and a start refused for a lost key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from server.jobstore import JobStore
from tests.support.servers import free_port, small_png, fake_server_env, start_fake_server, stop_server, wait_for_http, wait_until

KEY = {"Authorization": "Bearer faults-key"}
RAW = {**KEY, "Content-Type": "image/png"}


def launch(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log_path = tmp_path / "server.log"
    environment = fake_server_env("faults-key", tmp_path / "data", port, env)
    process = start_fake_server(log_path, environment, "--seconds-per-step", "0.1", *args)
    return process, f"http://127.0.0.1:{port}", log_path


def stop(process: subprocess.Popen) -> None:
    stop_server(process)


def test_a_full_disk_fails_one_job_gives_507_and_the_server_recovers(tmp_path: Path) -> None:
    flag = tmp_path / "disk-is-full"
    process, base_url, log_path = launch(tmp_path, "--full-disk-flag", str(flag))
    try:
        wait_for_http(base_url, "/readyz", timeout=90, process=process)
        with httpx.Client(base_url=base_url, timeout=10) as http:
            status = lambda job_id: http.get(f"/v1/jobs/{job_id}", headers=KEY).json()  # noqa: E731
            running = http.post("/v1/jobs?steps=20", content=small_png(), headers=RAW).json()["id"]  # ~2 s
            wait_until(lambda: status(running)["status"] == "running", 20)
            flag.touch()
            failed = wait_until(lambda: (view := status(running))["status"] == "failed" and view, 30)
            assert failed["error"]["code"] == "storage_full"
            ready = http.get("/readyz")
            assert (ready.status_code, ready.json()["detail"]) == (503, "storage_full")
            refused = http.post("/v1/jobs?steps=2", content=small_png(), headers=RAW)
            assert (refused.status_code, refused.json()["code"]) == (507, "storage_full")
            assert refused.headers["content-type"].startswith("application/problem+json")

            flag.unlink()  # space freed: no restart
            wait_until(lambda: http.get("/readyz").status_code == 200, 15)
            again = http.post("/v1/jobs?steps=2", content=small_png(), headers=RAW)
            assert again.status_code == 202, again.text
            done = wait_until(lambda: (view := status(again.json()["id"]))["status"] in {"succeeded", "failed"} and view, 30)
            assert done["status"] == "succeeded"
            assert process.poll() is None
    finally:
        stop(process)
    store = JobStore.in_data_dir(tmp_path / "data")
    try:
        record = store.get(running)
        assert (record.status, record.error_code) == ("failed", "storage_full")
    finally:
        store.close()
    log = log_path.read_text()
    assert "storage recovered from storage_full" in log
    assert "worker thread stopped" not in log and "internal_error" not in log
