"""Faults inside the worker loop fail at most their job, and /readyz tells the truth (in process).

A full disk (SQLite's COMMIT and then its ROLLBACK failing, result writes ENOSPC),
a process out of file descriptors (real EMFILE), a CUDA out-of-memory error, a
stage that never returns, and a worker thread that dies.
"""

from __future__ import annotations

import errno
import os
import resource
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from litestar.testing import TestClient

from lift3d.errors import GpuOutOfMemory, StorageFull, TooManyOpenFiles
from pipeline.runtime import Runtime
from pipeline.stage import StageContext
from pipeline.state import JobState
from server.app import create_app
from server.faults import storage_error
from server.problems import error_response, http_status
from tests.support.faults import DiskFull, sqlite_full
from tests.support.servers import BoxFinishStage, FailingStage, TimedStage, fake_engine, make_settings, small_png, wait_until

KEY = {"Authorization": "Bearer test-key-1"}
RAW = {**KEY, "Content-Type": "image/png"}
ENDED = {"succeeded", "failed", "cancelled", "expired"}


class Server:
    def __init__(self, client: TestClient, gate: threading.Event) -> None:
        self.client = client
        self.gate = gate

    @property
    def services(self) -> Any:
        return self.client.app.state.services

    def submit(self, steps: int = 2) -> Any:
        return self.client.post(f"/v1/jobs?steps={steps}", content=small_png(), headers=RAW)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.client.get(f"/v1/jobs/{job_id}", headers=KEY).json()

    def wait_ended(self, job_id: str, timeout: float = 20) -> dict[str, Any]:
        return wait_until(lambda: (j := self.job(job_id))["status"] in ENDED and j, timeout)

    def readyz(self) -> Any:
        return self.client.get("/readyz")

    def wait_running(self, job_id: str) -> None:
        wait_until(lambda: self.job(job_id)["status"] == "running")

    def run_one(self) -> dict[str, Any]:
        response = self.submit()
        assert response.status_code == 202, response.text
        return self.wait_ended(response.json()["id"])


def start(app: Any) -> TestClient:
    client = TestClient(app)
    client.__enter__()
    wait_until(lambda: client.get("/readyz").status_code == 200, 30)
    return client


def serve(tmp_path: Path, *stages: Any, gate: threading.Event | None = None, **overrides: Any) -> Iterator[Server]:
    settings = make_settings(tmp_path / "data", **overrides)
    gate = gate or threading.Event()
    gate.set()
    chosen = stages or (TimedStage(0.01, gate=gate), BoxFinishStage())
    client = start(create_app(settings, fake_engine(settings, *chosen)))
    try:
        yield Server(client, gate)
    finally:
        gate.set()
        client.__exit__(None, None, None)


@pytest.fixture()
def srv(tmp_path: Path) -> Iterator[Server]:
    yield from serve(tmp_path)


# -- storage faults -------------------------------------------------------------------


def test_storage_errors_map_to_typed_codes() -> None:
    assert isinstance(storage_error(OSError(errno.ENOSPC, "full")), StorageFull)
    assert isinstance(storage_error(OSError(errno.EDQUOT, "quota")), StorageFull)
    assert isinstance(storage_error(sqlite_full()), StorageFull)
    assert isinstance(storage_error(OSError(errno.EMFILE, "fds")), TooManyOpenFiles)
    assert storage_error(ValueError("a bug")) is None
    import sqlite3

    with pytest.raises(sqlite3.OperationalError) as bad_sql:
        sqlite3.connect(":memory:").execute("SELECT nope FROM nowhere")
    assert storage_error(bad_sql.value) is None, "a bad statement is a bug, not a storage fault"
    readonly = sqlite3.OperationalError("attempt to write a readonly database")
    readonly.sqlite_errorcode = 8  # type: ignore[attr-defined]
    assert storage_error(readonly).code == "storage_unavailable"
    assert http_status(StorageFull("x")) == 507
    assert http_status(TooManyOpenFiles("x")) == 503
    assert error_response(StorageFull("x")).headers["Retry-After"]


def test_a_full_disk_fails_the_running_job_then_the_server_recovers(srv: Server, monkeypatch) -> None:
    disk = DiskFull()
    disk.install(monkeypatch.setattr, [srv.services.storage.store])
    srv.gate.clear()
    job_id = srv.submit().json()["id"]
    srv.wait_running(job_id)
    disk.full = True  # the GLB write fails ENOSPC, then COMMIT and ROLLBACK of the ending fail too
    srv.gate.set()

    failed = srv.wait_ended(job_id)
    assert failed["status"] == "failed" and failed["error"]["code"] == "storage_full"
    ready = srv.readyz()
    assert ready.status_code == 503 and ready.json()["detail"] == "storage_full"
    refused = srv.submit()
    assert refused.status_code == 507, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "storage_full" and int(refused.headers["Retry-After"]) > 0
    assert 'lift3d_jobs_rejected_total{code="storage_full"} 1.0' in srv.client.get("/metrics", headers=KEY).text
    assert srv.services.manager._thread.is_alive()

    disk.full = False
    wait_until(lambda: srv.readyz().status_code == 200, 10)
    # The ending the disk refused was written once it could be, without a restart.
    stored = srv.services.storage.store.get(job_id)
    assert (stored.status, stored.error_code) == ("failed", "storage_full")
    assert srv.run_one()["status"] == "succeeded"


def test_a_full_disk_when_the_job_starts_fails_only_that_job(srv: Server, monkeypatch) -> None:
    disk = DiskFull()
    disk.install(monkeypatch.setattr, [srv.services.storage.store])
    srv.gate.clear()
    first = srv.submit().json()["id"]
    srv.wait_running(first)
    second = srv.submit().json()["id"]  # queued behind the first
    disk.full = True
    srv.gate.set()
    for job_id in (first, second):
        assert srv.wait_ended(job_id)["error"]["code"] == "storage_full"
    disk.full = False
    wait_until(lambda: srv.readyz().status_code == 200, 10)
    assert srv.run_one()["status"] == "succeeded"


def test_running_out_of_file_descriptors_fails_the_job_and_recovers(srv: Server) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    srv.gate.clear()
    job_id = srv.submit().json()["id"]
    srv.wait_running(job_id)
    held: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 32, hard))
    try:
        with pytest.raises(OSError) as exhausted:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        assert exhausted.value.errno == errno.EMFILE
        srv.gate.set()  # the result write now fails EMFILE
        wait_until(lambda: srv.services.storage.fault is not None, 20)
        assert srv.services.storage.fault.code == "too_many_open_files"
        assert srv.readyz().json()["detail"] == "too_many_open_files"
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    failed = srv.wait_ended(job_id)
    assert failed["error"]["code"] == "too_many_open_files"
    wait_until(lambda: srv.readyz().status_code == 200, 10)
    assert srv.run_one()["status"] == "succeeded"


# -- the worker thread itself --------------------------------------------------------


class ExitingStage(FailingStage):
    """A stage that ends the thread it runs on (BaseException): a bug the worker cannot survive."""

    def __init__(self) -> None:
        super().__init__(SystemExit(3))
        self.armed = False

    def run(self, job: JobState, ctx: StageContext) -> None:
        if self.armed:
            raise self.error


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_worker_thread_makes_readyz_and_submit_503(tmp_path: Path) -> None:
    stage = ExitingStage()
    gate = threading.Event()
    for srv in serve(tmp_path, TimedStage(0.01, gate=gate), stage, BoxFinishStage(), gate=gate):
        gate.clear()
        running = srv.submit().json()["id"]
        srv.wait_running(running)
        queued = srv.submit().json()["id"]
        stage.armed = True
        gate.set()
        wait_until(lambda: not srv.services.manager._thread.is_alive(), 20)
        assert srv.wait_ended(running)["error"]["code"] == "worker_stopped"
        assert srv.wait_ended(queued)["error"]["code"] == "worker_stopped", "a queued job must not wait forever"
        ready = srv.readyz()
        assert ready.status_code == 503 and ready.json()["detail"] == "worker_stopped"
        refused = srv.submit()
        assert refused.status_code == 503 and refused.json()["code"] == "worker_stopped"
        assert 'lift3d_jobs_rejected_total{code="worker_stopped"} 1.0' in srv.client.get("/metrics", headers=KEY).text


# -- CUDA out of memory ---------------------------------------------------------------


class OutOfMemoryOnce:
    name = "reconstruct"
    progress_weight = 0.1

    def __init__(self) -> None:
        self.armed = False
        self.emptied: list[int] = []
        self.emptied_before_runs: list[int] = []

    def load(self, runtime: Runtime) -> None:
        pass

    def run(self, job: JobState, ctx: StageContext) -> None:
        import torch

        self.emptied_before_runs.append(len(self.emptied))
        if self.armed:
            self.armed = False
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_cuda_out_of_memory_fails_the_job_frees_the_cache_and_the_next_runs(tmp_path: Path, monkeypatch) -> None:
    import torch

    oom = OutOfMemoryOnce()
    emptied = oom.emptied
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    for srv in serve(tmp_path, TimedStage(0.01), oom, BoxFinishStage()):
        oom.armed = True
        failed = srv.run_one()
        assert failed["status"] == "failed" and failed["error"]["code"] == "gpu_out_of_memory"
        assert emptied, "the CUDA cache was not freed"
        assert srv.readyz().status_code == 200
        assert srv.run_one()["status"] == "succeeded"
        # The cache was emptied before the next job's device stage ran, not only when the host lane ended the job.
        assert oom.emptied_before_runs[-1] >= 1
    assert http_status(GpuOutOfMemory("x")) == 503 and GpuOutOfMemory.retry_after_seconds


def test_freeing_the_cache_is_safe_without_cuda() -> None:
    import torch

    from server.faults import free_gpu_cache, job_failure

    free_gpu_cache()  # torch present, no CUDA device: must not raise
    assert job_failure(torch.cuda.OutOfMemoryError("CUDA out of memory.")).code == "gpu_out_of_memory"
    assert job_failure(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")).code == "gpu_out_of_memory"
    assert job_failure(RuntimeError("shape mismatch")) is None
    assert job_failure(OSError(errno.ENOSPC, "full")).code == "storage_full"  # a stage's temp file
    assert job_failure(FileNotFoundError(errno.ENOENT, "model.onnx")) is None  # a bug, not storage


# -- a stage that never returns (the watchdog) -------------------------------------------


class HangingStage:
    name = "reconstruct"
    progress_weight = 0.1

    def __init__(self) -> None:
        self.armed = False
        self.release = threading.Event()

    def load(self, runtime: Runtime) -> None:
        pass

    def run(self, job: JobState, ctx: StageContext) -> None:
        if self.armed:
            self.armed = False
            self.release.wait(60)  # never checks the deadline, like a stuck CUDA call


def test_a_hung_stage_fails_its_job_and_readiness_reports_it(tmp_path: Path) -> None:
    hang = HangingStage()
    stages = (TimedStage(0.01), hang, BoxFinishStage())
    for srv in serve(tmp_path, *stages, server__job_deadline_seconds=1.5, server__watchdog_grace_seconds=0.5):
        hang.armed = True
        job_id = srv.submit().json()["id"]
        started = time.monotonic()
        failed = srv.wait_ended(job_id, timeout=15)
        assert failed["status"] == "failed" and failed["error"]["code"] == "deadline_exceeded"
        assert time.monotonic() - started < 10
        ready = srv.readyz()
        assert ready.status_code == 503 and ready.json()["detail"] == "stage_hung"
        refused = srv.submit()
        assert refused.status_code == 503 and refused.json()["code"] == "stage_hung"

        hang.release.set()  # the stuck call returns: the worker takes jobs again
        wait_until(lambda: srv.readyz().status_code == 200, 10)
        assert srv.job(job_id)["status"] == "failed", "the late stage must not overwrite the watchdog's ending"
        assert srv.run_one()["status"] == "succeeded"


# -- status follows the clock --------------------------------------------------------------


def test_status_says_expired_between_expiry_and_the_sweep(tmp_path: Path) -> None:
    for srv in serve(tmp_path, storage__sweep_interval_seconds=3600.0):
        response = srv.client.post("/v1/jobs?steps=2&retention_seconds=1", content=small_png(), headers=RAW)
        job_id = response.json()["id"]
        assert srv.wait_ended(job_id)["status"] == "succeeded"
        time.sleep(1.2)
        view = srv.job(job_id)
        assert view["status"] == "expired" and view["result"] is None and view["options"] == {}
        assert srv.client.get(f"/v1/jobs/{job_id}/model.glb", headers=KEY).json()["code"] == "expired"
        assert srv.services.storage.store.get(job_id).status == "succeeded", "the sweeper has not run yet"


def test_the_job_store_survives_a_failed_commit_and_rollback(tmp_path: Path, monkeypatch) -> None:
    import sqlite3

    from server.jobstore import JobRecord, JobStore

    store = JobStore(tmp_path / "jobs.sqlite3")
    disk = DiskFull()
    disk.install(monkeypatch.setattr, [store])
    store.create(JobRecord(id="a", created_at=1.0, retention_seconds=60))
    disk.full = True
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):  # COMMIT's error, not ROLLBACK's
        store.finish("a", "failed", 2.0, error_code="x")
    assert store.get("a").status == "queued"
    disk.full = False
    assert store.finish("a", "failed", 3.0, error_code="x").status == "failed"  # no "within a transaction"
    store.close()
