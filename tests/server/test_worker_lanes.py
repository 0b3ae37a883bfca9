"""The worker on the two lanes: a job's device part overlaps the next job's host part, uploads
are dropped, drain ends the jobs in every lane, and ``engine.overlap=false`` is serial."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from litestar.testing import TestClient

from pipeline.state import JobState
from pipeline.stage import StageContext
from server.app import create_app
from tests.support.servers import BoxFinishStage, TimedStage, fake_engine, make_settings, small_png, wait_until

KEY = {"Authorization": "Bearer test-key-1"}
TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


class DeviceStage(TimedStage):
    """The model stages, in the device lane; records when each job held it."""

    lane = "device"

    def __init__(self, seconds_per_step: float, gate: threading.Event | None = None) -> None:
        super().__init__(seconds_per_step, gate=gate)
        self.spans: list[tuple[int, float, float]] = []

    def run(self, job: JobState, ctx: StageContext) -> None:
        started = time.monotonic()
        super().run(job, ctx)
        self.spans.append((job.options.seed, started, time.monotonic()))


class SlowFinishStage(BoxFinishStage):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.spans: list[tuple[int, float, float]] = []

    def run(self, job: JobState, ctx: StageContext) -> None:
        started = time.monotonic()
        time.sleep(self.seconds)
        super().run(job, ctx)
        self.spans.append((job.options.seed, started, time.monotonic()))


def start(tmp_path: Path, device: DeviceStage, finish: SlowFinishStage, **overrides) -> TestClient:
    settings = make_settings(tmp_path / "data", server__queue_size=4, **overrides)
    client = TestClient(create_app(settings, fake_engine(settings, device, finish)))
    client.__enter__()
    wait_until(lambda: client.get("/readyz").status_code == 200, 30)
    return client


def submit(client: TestClient, seed: int, steps: int = 5) -> str:
    response = client.post(
        "/v1/jobs",
        files={"image": ("photo.png", small_png(), "image/png")},
        data={"seed": str(seed), "steps": str(steps)},
        headers=KEY,
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def status(client: TestClient, job_id: str) -> str:
    return client.get(f"/v1/jobs/{job_id}", headers=KEY).json()["status"]


@pytest.fixture()
def stages() -> Iterator[tuple[DeviceStage, SlowFinishStage]]:
    yield DeviceStage(0.03), SlowFinishStage(0.2)


@pytest.mark.parametrize("overlap", [True, False])
def test_the_device_part_of_one_job_overlaps_the_finish_of_the_one_before_only_with_overlap(tmp_path, stages, overlap):
    device, finish = stages
    client = start(tmp_path, device, finish, engine__overlap=overlap)
    try:
        jobs = [submit(client, seed) for seed in (11, 12, 13)]
        wait_until(lambda: all(status(client, job) in TERMINAL for job in jobs), 30)
        assert [status(client, job) for job in jobs] == ["succeeded"] * 3
        for job in jobs:
            assert client.get(f"/v1/jobs/{job}/model.glb", headers=KEY).status_code == 200
            assert client.app.state.services.manager.live(job) is None  # upload gone
        device_12 = next(span for span in device.spans if span[0] == 12)
        finish_11 = next(span for span in finish.spans if span[0] == 11)
        overlapped = device_12[1] < finish_11[2]
        assert overlapped is overlap
    finally:
        client.__exit__(None, None, None)


def test_drain_ends_the_jobs_in_both_lanes(tmp_path):
    gate = threading.Event()
    gate.set()
    device, finish = DeviceStage(0.01, gate=gate), SlowFinishStage(0.0)
    client = start(tmp_path, device, finish, server__shutdown_grace_seconds=0.2)
    manager = client.app.state.services.manager
    try:
        gate.clear()
        on_device = submit(client, 21)
        wait_until(lambda: status(client, on_device) == "running")
        prepared = submit(client, 22)  # decoded on the host lane, then waits for the device
        wait_until(lambda: status(client, prepared) == "running")
        queued = submit(client, 23)
        assert client.get(f"/v1/jobs/{queued}", headers=KEY).json()["queue_position"] == 1
        threading.Thread(target=manager.drain, args=(0.2,), daemon=True).start()
        wait_until(lambda: all(status(client, job) in TERMINAL for job in (on_device, prepared, queued)), 20)
        ended = [client.get(f"/v1/jobs/{job}", headers=KEY).json() for job in (on_device, prepared, queued)]
        assert [job["status"] for job in ended] == ["failed"] * 3
        assert {job["error"]["code"] for job in ended} == {"shutting_down"}
        for job in (on_device, prepared, queued):
            wait_until(lambda job=job: manager.live(job) is None, 10)
    finally:
        gate.set()
        client.__exit__(None, None, None)


def test_the_watchdog_fails_a_job_hung_in_the_device_lane(tmp_path):
    from tests.server.test_faults import HangingStage, serve

    class HangingDeviceStage(HangingStage):
        lane = "device"

    hang = HangingDeviceStage()
    stages = (TimedStage(0.01), hang, BoxFinishStage())
    for srv in serve(tmp_path, *stages, server__job_deadline_seconds=1.5, server__watchdog_grace_seconds=0.5):
        hang.armed = True
        job_id = srv.submit().json()["id"]
        failed = srv.wait_ended(job_id, timeout=15)
        assert failed["status"] == "failed" and failed["error"]["code"] == "deadline_exceeded"
        assert srv.readyz().json()["detail"] == "stage_hung"
        hang.release.set()  # the stuck call returns: the lanes take jobs again
        wait_until(lambda: srv.readyz().status_code == 200, 10)
        assert srv.job(job_id)["status"] == "failed", "the late stage must not overwrite the watchdog's ending"
        assert srv.run_one()["status"] == "succeeded"
