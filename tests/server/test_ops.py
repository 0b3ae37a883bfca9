"""The real server process (uvicorn) with a fake engine: overload (429) and the SIGTERM drain."""

from __future__ import annotations

import concurrent.futures
import contextlib
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
from server.jobstore import JobStore
from tests.support.servers import free_port, small_png, fake_server_env, start_fake_server, stop_server, wait_for_http, wait_until

KEY = {"Authorization": "Bearer ops-key"}
RAW = {**KEY, "Content-Type": "image/png"}


class ServerProcess:
    def __init__(self, process: subprocess.Popen, base_url: str, log_path: Path, data_dir: Path) -> None:
        self.process = process
        self.base_url = base_url
        self.log_path = log_path
        self.data_dir = data_dir
        self.http = httpx.Client(base_url=base_url, timeout=10)

    def submit(self, steps: int) -> httpx.Response:
        return self.http.post(f"/v1/jobs?steps={steps}", content=small_png(), headers=RAW)

    def status(self, job_id: str) -> str:
        return self.http.get(f"/v1/jobs/{job_id}", headers=KEY).json()["status"]

    def log(self) -> str:
        return self.log_path.read_text()


@contextlib.contextmanager
def fake_server(tmp_path: Path, seconds_per_step: float, **env: str) -> Iterator[ServerProcess]:
    port = free_port()
    data_dir = tmp_path / "data"
    log_path = tmp_path / "server.log"
    environment = fake_server_env("ops-key", data_dir, port, env)
    process = start_fake_server(log_path, environment, "--seconds-per-step", str(seconds_per_step))
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path, data_dir)
    try:
        wait_for_http(server.base_url, "/readyz", timeout=90, process=process)
        yield server
    finally:
        stop_server(process)
        server.http.close()


def test_overload_then_sigterm_drain(tmp_path: Path) -> None:
    """One server process (start-up costs most of this test): overload first, then the drain."""
    with fake_server(tmp_path, 0.1, LIFT3D_QUEUE_SIZE="2", LIFT3D_SHUTDOWN_GRACE_SECONDS="20") as server:
        # -- overload: 1 running + 2 queued, so the 4th submission is refused
        first = server.submit(steps=200)  # ~20 s on the worker
        assert first.status_code == 202
        wait_until(lambda: server.status(first.json()["id"]) == "running", 20)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            responses = list(pool.map(lambda _: server.submit(steps=2), range(3)))
        codes = sorted(response.status_code for response in responses)
        assert codes == [202, 202, 429], [r.text for r in responses]
        rejected = next(r for r in responses if r.status_code == 429)
        assert rejected.headers["content-type"].startswith("application/problem+json")
        assert rejected.json()["code"] == "queue_full"
        retry_after = int(rejected.headers["retry-after"])
        assert 1 <= retry_after <= 3600
        assert rejected.json()["retry_after"] == retry_after
        metrics = server.http.get("/metrics", headers=KEY).text
        assert 'lift3d_jobs_rejected_total{code="queue_full"} 1.0' in metrics
        assert "lift3d_queue_depth 2.0" in metrics

        # The queue drains once the long job is gone; nothing on the way was a 5xx.
        assert server.http.delete(f"/v1/jobs/{first.json()['id']}", headers=KEY).status_code == 204
        for job_id in [r.json()["id"] for r in responses if r.status_code == 202]:
            wait_until(lambda: server.status(job_id) == "succeeded", 30)

        # -- SIGTERM: the running job finishes, queued ones fail shutting_down, exit 0
        running = server.submit(steps=30).json()["id"]  # ~3 s, well inside the grace period
        wait_until(lambda: server.status(running) == "running", 20)
        queued = [server.submit(steps=2).json()["id"] for _ in range(2)]
        server.process.send_signal(signal.SIGTERM)
        # While draining, the server still answers: not ready, and no new work.
        readiness = wait_until(lambda: (r := server.http.get("/readyz")).status_code == 503 and r, 5)
        assert readiness.json()["detail"] == "draining"
        refused = server.submit(steps=2)
        assert (refused.status_code, refused.json()["code"]) == (503, "shutting_down")
        assert server.http.get("/healthz").status_code == 200
        assert server.process.wait(30) == 0
        log = server.log()

    store = JobStore.in_data_dir(server.data_dir)
    try:
        assert store.get(running).status == "succeeded"
        for job_id in queued:
            record = store.get(job_id)
            assert (record.status, record.error_code) == ("failed", "shutting_down")
    finally:
        store.close()
    assert "draining" in log
    # No access log lines: they would carry client addresses.
    assert '"GET /' not in log and '"POST /' not in log
    assert "ops-key" not in log
