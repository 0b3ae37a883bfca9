"""The SQLite job store: records, lifecycle transitions, erasure, idempotency, threads."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from server.problems import http_status

from server.jobstore import (
    OPERATIONAL_FIELDS,
    IdempotencyKeyReused,
    JobRecord,
    JobStore,
    new_job_id,
)


@pytest.fixture()
def store(tmp_path: Path) -> JobStore:
    store = JobStore.in_data_dir(tmp_path)
    yield store
    store.close()


def make(store: JobStore, *, owner: str | None = "alice", now: float = 1000.0, **fields) -> JobRecord:
    record = JobRecord(
        id=fields.pop("id", None) or new_job_id(),
        created_at=now,
        retention_seconds=fields.pop("retention_seconds", 60),
        owner=owner,
        options={"steps": 4, "seed": 7},
        seed=7,
        weights_mode="tiny",
        **fields,
    )
    created, is_new = store.create(record)
    assert is_new
    return created


def test_database_is_wal_and_private(store: JobStore) -> None:
    make(store)
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    files = list(store.path.parent.glob("jobs.sqlite3*"))
    assert {p.name for p in files} >= {"jobs.sqlite3", "jobs.sqlite3-wal", "jobs.sqlite3-shm"}
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in files), files


def test_record_round_trips_every_field(store: JobStore) -> None:
    record = make(store, webhook_url="https://hooks.example/x", idempotency_key="k1", request_hash="h1")
    store.start(record.id, now=1001.0)
    store.update(record.id, stage="multiview", progress=0.5, timings={"decode": 0.01})
    loaded = store.get(record.id)
    assert loaded is not None
    assert (loaded.status, loaded.stage, loaded.progress) == ("running", "multiview", 0.5)
    assert loaded.options == {"steps": 4, "seed": 7}
    assert loaded.timings == {"decode": 0.01}
    assert loaded.started_at == 1001.0
    assert loaded.webhook_url == "https://hooks.example/x"
    assert loaded.idempotency_key == "k1"


def test_persists_across_reopen(tmp_path: Path) -> None:
    first = JobStore.in_data_dir(tmp_path)
    record = make(first)
    first.close()
    second = JobStore.in_data_dir(tmp_path)
    assert second.get(record.id) == record
    second.close()


def test_refuses_image_bytes(store: JobStore) -> None:
    record = JobRecord(id=new_job_id(), created_at=1.0, retention_seconds=60, options={"image": b"\x89PNG"})
    with pytest.raises(TypeError, match="bytes"):
        store.create(record)
    ok = make(store)
    with pytest.raises(TypeError, match="bytes"):
        store.update(ok.id, result={"preview": b"\xff\xd8"})
    with pytest.raises(TypeError, match="bytes"):
        store.update(ok.id, error_message=b"raw")


def test_unknown_fields_are_rejected(store: JobStore) -> None:
    record = make(store)
    with pytest.raises(KeyError):
        store.update(record.id, image_bytes="x")
    with pytest.raises(KeyError):
        store.update(record.id, id="other")


def test_finish_starts_retention_clock_once(store: JobStore) -> None:
    record = make(store, retention_seconds=30)
    store.start(record.id, 1001.0)
    done = store.finish(record.id, "succeeded", 1010.0, result={"faces": 12}, artifacts=["model.glb"])
    assert done is not None
    assert (done.status, done.finished_at, done.expires_at) == ("succeeded", 1010.0, 1040.0)
    assert done.result == {"faces": 12}
    # A second ending (a late worker, a cancel after success) changes nothing.
    assert store.finish(record.id, "failed", 1020.0, error_code="x") is None
    assert store.get(record.id).status == "succeeded"


def test_start_only_from_queued(store: JobStore) -> None:
    record = make(store)
    store.delete(record.id, 1001.0)
    assert store.start(record.id, 1002.0) is None


def test_idempotency_key_same_request_returns_existing(store: JobStore) -> None:
    first = make(store, idempotency_key="key", request_hash="hash-a")
    again = JobRecord(id=new_job_id(), created_at=2.0, retention_seconds=60, idempotency_key="key", request_hash="hash-a")
    existing, created = store.create(again)
    assert not created and existing.id == first.id
    assert store.find_by_idempotency_key("key").id == first.id


def test_idempotency_key_different_request_is_422(store: JobStore) -> None:
    make(store, idempotency_key="key", request_hash="hash-a")
    other = JobRecord(id=new_job_id(), created_at=2.0, retention_seconds=60, idempotency_key="key", request_hash="hash-b")
    with pytest.raises(IdempotencyKeyReused) as info:
        store.create(other)
    assert http_status(info.value) == 422 and info.value.code == "idempotency_key_reused"


def test_erased_idempotency_key_can_be_reused(store: JobStore) -> None:
    first = make(store, idempotency_key="key", request_hash="hash-a")
    store.delete(first.id, 1001.0)
    second = make(store, idempotency_key="key", request_hash="hash-b")
    assert store.find_by_idempotency_key("key").id == second.id


def test_delete_strips_to_operational_fields_and_hides(store: JobStore) -> None:
    record = make(store, webhook_url="https://hooks.example/x", idempotency_key="k", request_hash="h")
    store.start(record.id, 1001.0)
    store.update(record.id, timings={"decode": 0.1})
    before = store.delete(record.id, 1002.0)
    assert before is not None and before.status == "running" and before.owner == "alice"
    assert store.get(record.id) is None
    assert store.delete(record.id, 1003.0) is None  # idempotent
    stripped = store.get(record.id, include_erased=True)
    assert stripped.status == "cancelled"  # it was running: the erasure cancelled it
    assert stripped.timings == {"decode": 0.1} and stripped.started_at == 1001.0
    assert stripped.erased_at == 1002.0
    blank = JobRecord(id=record.id, created_at=0.0, retention_seconds=0)
    for name in JobRecord.__struct_fields__:
        if name not in OPERATIONAL_FIELDS:
            assert getattr(stripped, name) == getattr(blank, name), name


def test_nothing_personal_survives_erasure_in_the_database_file(store: JobStore) -> None:
    record = make(store, owner="owner-canary-6f1d", webhook_url="https://hooks.example/canary-hook")
    store.update(record.id, error_message="canary-message")
    # Several pages of other data, so the erased row shares its page with live ones.
    for _ in range(40):
        make(store, owner="bob")
    assert store.get(record.id).owner == "owner-canary-6f1d"
    store.delete_owner("owner-canary-6f1d", 1001.0)
    # No VACUUM, no close: the erasure itself must leave no trace in the files.
    raw = b"".join(p.read_bytes() for p in store.path.parent.glob("jobs.sqlite3*"))
    for canary in (b"owner-canary-6f1d", b"canary-hook", b"canary-message"):
        assert canary not in raw


def test_owner_listing_and_owner_erasure(store: JobStore) -> None:
    a1 = make(store, owner="alice", now=1.0)
    a2 = make(store, owner="alice", now=2.0)
    b1 = make(store, owner="bob", now=3.0)
    assert [r.id for r in store.list_by_owner("alice")] == [a1.id, a2.id]
    erased = store.delete_owner("alice", 10.0)
    assert {r.id for r in erased} == {a1.id, a2.id}
    assert store.list_by_owner("alice") == []
    assert store.get(a1.id) is None and store.get(a2.id) is None
    assert store.get(b1.id) == b1
    assert store.delete_owner("alice", 11.0) == []


def test_expired_lists_only_ended_jobs_past_expiry(store: JobStore) -> None:
    done = make(store, retention_seconds=10)
    store.finish(done.id, "succeeded", 100.0, artifacts=["model.glb"])
    failed = make(store, retention_seconds=50)
    store.finish(failed.id, "failed", 100.0, error_code="x", error_message="y")
    make(store, retention_seconds=1)  # still queued: never expires while queued
    assert store.expired(109.0) == []
    assert [r.id for r in store.expired(110.0)] == [done.id]
    assert {r.id for r in store.expired(151.0)} == {done.id, failed.id}
    assert store.mark_expired(done.id)
    expired = store.get(done.id)
    assert expired.status == "expired" and expired.owner is None and expired.artifacts == []
    assert expired.finished_at == 100.0
    assert done.id not in {r.id for r in store.expired(200.0)}
    assert done.id not in {r.id for r in store.list_by_owner("alice")}


def test_mark_interrupted_fails_active_jobs_only(store: JobStore) -> None:
    queued = make(store)
    running = make(store)
    store.start(running.id, 1001.0)
    done = make(store)
    store.finish(done.id, "succeeded", 1002.0)
    interrupted = store.mark_interrupted(2000.0)
    assert {r.id for r in interrupted} == {queued.id, running.id}
    for job_id in (queued.id, running.id):
        record = store.get(job_id)
        assert (record.status, record.error_code) == ("failed", "interrupted")
        assert record.expires_at == 2000.0 + record.retention_seconds
    assert store.get(done.id).status == "succeeded"
    assert store.mark_interrupted(3000.0) == []


def test_live_result_ids_and_counts(store: JobStore) -> None:
    done = make(store)
    store.finish(done.id, "succeeded", 5.0)
    make(store)
    erased = make(store)
    store.finish(erased.id, "succeeded", 6.0)
    store.delete(erased.id, 7.0)
    assert store.live_result_ids() == {done.id}
    counts = store.count_by_status()
    assert counts["succeeded"] == 1 and counts["queued"] == 1 and counts["erased"] == 1
    assert counts["expired"] == 0 and sum(counts.values()) == 3


def test_concurrent_writers_from_threads(store: JobStore) -> None:
    records = [make(store) for _ in range(8)]
    errors: list[BaseException] = []

    def hammer(record: JobRecord) -> None:
        try:
            for step in range(50):
                store.update(record.id, progress=step / 50, stage="multiview")
                store.get(record.id)
            store.finish(record.id, "succeeded", 10.0)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(r,)) for r in records]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(store.get(r.id).status == "succeeded" for r in records)
