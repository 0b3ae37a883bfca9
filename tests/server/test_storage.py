"""Storage: retention, erasure and start-up recovery over the job store and the result store."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from lift3d.errors import DataDirInUse, InvalidOption, JobNotFound, StorageFull
from lift3d.settings import StorageSettings
from server.jobstore import JobStore
from server.results import generate_key_text
from server.storage import NewJob, Storage, request_hash, resolve_retention

GLB = b"glTF\x02\x00\x00\x00" + bytes(range(256)) * 8


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock() -> Clock:
    return Clock()


def make_lifecycle(tmp_path: Path, clock: Clock, **settings) -> Storage:
    storage = StorageSettings(data_dir=str(tmp_path), encryption_keys=(KEY,), **settings)
    return Storage(storage, clock=clock)


def new(options: dict | None = None, **fields) -> NewJob:
    fields.setdefault("request_hash", "h")
    return NewJob(options=options or {}, weights_mode="tiny", **fields)


KEY = generate_key_text()


@pytest.fixture()
def life(tmp_path: Path, clock: Clock) -> Storage:
    lifecycle = make_lifecycle(tmp_path, clock, default_retention_seconds=100, max_retention_seconds=1000)
    yield lifecycle
    lifecycle.close()


def finished_job(life: Storage, owner: str = "alice", retention: int | None = None) -> str:
    record, _ = life.new_job(new({"seed": 1}, owner=owner, retention_seconds=retention))
    life.start_job(record.id)
    assert life.publish(record.id, {"model.glb": GLB, "views.png": b"\x89PNG-views"}, result={"faces": 10})
    return record.id


def test_one_process_per_data_dir(tmp_path: Path, clock: Clock) -> None:
    first = make_lifecycle(tmp_path, clock)
    first.recover()
    second = make_lifecycle(tmp_path, clock)
    with pytest.raises(DataDirInUse) as info:
        second.recover()
    assert info.value.code == "data_dir_in_use"
    second.close()
    first.close()
    third = make_lifecycle(tmp_path, clock)
    third.recover()
    third.close()


def test_resolve_retention() -> None:
    settings = StorageSettings(default_retention_seconds=86_400, max_retention_seconds=3_600 * 48)
    assert resolve_retention(None, settings) == 86_400
    assert resolve_retention(5, settings) == 5
    for bad in (0, -1, 3_600 * 48 + 1, True, 2.5, "60"):
        with pytest.raises(InvalidOption) as info:
            resolve_retention(bad, settings)  # type: ignore[arg-type]
        assert info.value.code == "invalid_retention_seconds"
    # A default above the maximum is clamped rather than making every job a 422.
    assert resolve_retention(None, StorageSettings(default_retention_seconds=10, max_retention_seconds=5)) == 5


def test_result_served_until_expiry_then_swept(life: Storage, clock: Clock) -> None:
    job_id = finished_job(life, retention=50)
    record = life.store.get(job_id)
    assert record.expires_at == clock.now + 50
    assert life.read(job_id, "model.glb") == GLB
    clock.now += 50
    # Past expires_at nothing is served, even before the sweeper has run.
    with pytest.raises(JobNotFound):
        life.read(job_id, "model.glb")
    assert life.sweep_expired() == 1
    assert not (life.results.root / job_id).exists()
    expired = life.store.get(job_id)
    assert expired.status == "expired" and expired.owner is None and expired.result == {}
    assert life.owner_jobs("alice") == []
    assert life.sweep_expired() == 0


def test_erase_job_removes_files_and_record(life: Storage) -> None:
    job_id = finished_job(life)
    before = life.erase_job(job_id)
    assert before is not None and before.status == "succeeded"
    assert life.store.get(job_id) is None
    assert not (life.results.root / job_id).exists()
    with pytest.raises(JobNotFound):
        life.read(job_id, "model.glb")
    assert life.erase_job(job_id) is None
    assert life.erase_job("../../etc") is None


def test_erase_owner_leaves_other_owners_intact(life: Storage) -> None:
    alice = [finished_job(life, "alice"), finished_job(life, "alice")]
    queued, _ = life.new_job(new({}, owner="alice"))
    bob = finished_job(life, "bob")
    erased = life.erase_owner("alice")
    assert {r.id for r in erased} == {*alice, queued.id}
    assert {r.id: r.status for r in erased}[queued.id] == "queued"  # the caller cancels it
    assert life.owner_jobs("alice") == []
    for job_id in alice:
        with pytest.raises(JobNotFound):
            life.read(job_id, "model.glb")
        assert not (life.results.root / job_id).exists()
    assert life.read(bob, "model.glb") == GLB
    assert [r.id for r in life.owner_jobs("bob")] == [bob]


def test_erasure_racing_the_worker_wins(life: Storage) -> None:
    record, _ = life.new_job(new({}, owner="alice"))
    life.start_job(record.id)
    life.erase_job(record.id)  # DELETE arrives while the job runs
    assert life.publish(record.id, {"model.glb": GLB}) is None
    assert not (life.results.root / record.id).exists()
    assert life.store.get(record.id, include_erased=True).status == "cancelled"


def test_failed_publish_leaves_nothing(life: Storage, monkeypatch) -> None:
    record, _ = life.new_job(new({}))
    life.start_job(record.id)
    real_put = life.results.put

    def put_then_fail(job_id, name, data):
        if name == "views.png":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_put(job_id, name, data)

    monkeypatch.setattr(life.results, "put", put_then_fail)
    with pytest.raises(StorageFull):
        life.publish(record.id, {"model.glb": GLB, "views.png": b"png"})
    assert not (life.results.root / record.id).exists()


def test_recover_after_a_crash(tmp_path: Path, clock: Clock) -> None:
    first = make_lifecycle(tmp_path, clock)
    first.recover()
    done = finished_job(first)
    queued, _ = first.new_job(new({}))
    running, _ = first.new_job(new({}))
    first.start_job(running.id)
    # The running job had stored its GLB when the process died, before being marked succeeded.
    first.results.put(running.id, "model.glb", GLB)
    (first.results.root / done / ".model.glb.enc.dead.partial").write_bytes(b"half a file")
    first.close()  # (SIGKILL runs no shutdown code; the kernel would release the files and the lock)

    second = make_lifecycle(tmp_path, clock)
    interrupted = second.recover()
    assert {r.id for r in interrupted} == {queued.id, running.id}
    for job_id in (queued.id, running.id):
        record = second.store.get(job_id)
        assert (record.status, record.error_code) == ("failed", "interrupted")
    assert second.read(done, "model.glb") == GLB
    files = sorted(p.relative_to(second.results.root).as_posix() for p in second.results.root.rglob("*"))
    assert files == [done, f"{done}/model.glb.enc", f"{done}/views.png.enc"]
    second.close()


def test_interrupted_jobs_get_their_webhook_after_restart(tmp_path: Path, clock: Clock) -> None:
    settings = {"webhook_secret": "s", "webhook_allowlist": ("https://hooks.example/",)}
    first = make_lifecycle(tmp_path, clock, **settings)
    with_hook, _ = first.new_job(new({}, webhook_url="https://hooks.example/a"))
    first.new_job(new({}))  # no webhook_url: nothing to send
    first.close()

    second = make_lifecycle(tmp_path, clock, **settings)
    scheduled: list[str] = []
    second.notifier.schedule = scheduled.append  # type: ignore[method-assign]
    assert len(second.recover()) == 2

    async def run() -> None:
        second.start()
        await second.aclose()

    asyncio.run(run())
    assert scheduled == [with_hook.id]


def test_idempotent_submission(life: Storage) -> None:
    digest = request_hash(b"image-bytes", {"seed": 1})
    first, created = life.new_job(new({"seed": 1}, idempotency_key="k", request_hash=digest))
    again, created_again = life.new_job(new({"seed": 1}, idempotency_key="k", request_hash=digest))
    assert created and not created_again and again.id == first.id
    with pytest.raises(InvalidOption):
        life.new_job(new({"seed": 2}, idempotency_key="k", request_hash=request_hash(b"image-bytes", {"seed": 2})))
    assert request_hash(b"a", {"x": 1, "y": 2}) == request_hash(b"a", {"y": 2, "x": 1})
    assert request_hash(b"a", {}) != request_hash(b"b", {})


def test_submission_validates_webhook_and_retention(life: Storage) -> None:
    with pytest.raises(InvalidOption):
        life.new_job(new({}, webhook_url="http://169.254.169.254/"))
    with pytest.raises(InvalidOption):
        life.new_job(new({}, retention_seconds=10_000))
    assert life.store.count_by_status()["queued"] == 0


def test_sweeper_task_runs_on_the_loop(tmp_path: Path, clock: Clock) -> None:
    life = make_lifecycle(tmp_path, clock, sweep_interval_seconds=0.05)
    job_id = finished_job(life, retention=1)
    clock.now += 2

    async def run() -> None:
        life.start()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if life.store.get(job_id).status == "expired":
                break
        await life.aclose()

    asyncio.run(run())
    store = JobStore.in_data_dir(tmp_path)
    assert store.get(job_id).status == "expired"
    assert not (tmp_path / "results" / job_id).exists()
    store.close()


def test_sweeper_survives_a_failing_sweep(tmp_path: Path, clock: Clock) -> None:
    life = make_lifecycle(tmp_path, clock, sweep_interval_seconds=0.01)
    calls: list[int] = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("disk hiccup")
        return 0

    life.sweep_expired = flaky  # type: ignore[method-assign]

    async def run() -> None:
        life.start()
        while len(calls) < 3:
            await asyncio.sleep(0.01)
        await life.aclose()

    asyncio.run(asyncio.wait_for(run(), 5))
    assert len(calls) >= 3


def test_notify_from_the_worker_thread_reaches_the_loop(tmp_path: Path, clock: Clock) -> None:
    life = make_lifecycle(tmp_path, clock)
    scheduled: list[str] = []
    life.notifier.schedule = scheduled.append  # type: ignore[method-assign]

    async def run() -> None:
        life.start()
        await asyncio.to_thread(life.notify, "job-from-thread")
        life.notify("job-from-loop")
        await asyncio.sleep(0.05)
        await life.aclose()

    asyncio.run(run())
    assert sorted(scheduled) == ["job-from-loop", "job-from-thread"]
