"""Retention and erasure: how long results live, and how they are removed.

Every path that removes a result goes through here, so "erased" always means
the same thing: the files are unlinked and the record is stripped to what
operations need (id, status, timestamps, stage timings).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from lift3d.settings import StorageSettings
from lift3d.errors import InvalidOption
from server.jobstore import JobRecord, JobStore
from server.results import ResultNotFound, ResultStore

log = logging.getLogger("lift3d.retention")


def resolve_retention(requested: int | None, settings: StorageSettings) -> int:
    """Seconds a job's results and record live after it ends (422 outside 1..max)."""
    if requested is None:
        return min(settings.default_retention_seconds, settings.max_retention_seconds)
    if isinstance(requested, bool) or not isinstance(requested, int):
        raise InvalidOption("retention_seconds must be an integer", code="invalid_retention_seconds")
    if not 1 <= requested <= settings.max_retention_seconds:
        raise InvalidOption(
            f"retention_seconds must be between 1 and {settings.max_retention_seconds}, got {requested}",
            code="invalid_retention_seconds",
        )
    return requested


def _delete_results(results: ResultStore, job_id: str) -> int:
    try:
        return results.delete(job_id)
    except ResultNotFound:  # an id that cannot name a folder has nothing stored
        return 0


def publish_results(
    store: JobStore, results: ResultStore, job_id: str, artifacts: dict[str, bytes], now: float, **fields: object
) -> JobRecord | None:
    """Store a finished job's artifacts, then mark it succeeded (starting its retention).

    Returns None when the job was erased or ended meanwhile; its artifacts are then
    removed again, so an erasure that races the worker always wins.
    """
    try:
        for name, data in artifacts.items():
            results.put(job_id, name, data)
        record = store.finish(job_id, "succeeded", now, artifacts=sorted(artifacts), **fields)
    except BaseException:
        _delete_results(results, job_id)
        raise
    if record is None:
        _delete_results(results, job_id)
    return record


def read_result(store: JobStore, results: ResultStore, job_id: str, name: str, now: float) -> bytes:
    """A live result's bytes; ResultNotFound (404) for unknown, erased, expired or absent ones.

    Expiry is checked against the clock, not only the sweeper, so a result is never
    served past its ``expires_at`` even between sweeps.
    """
    record = store.get(job_id)
    if (
        record is None
        or record.status != "succeeded"
        or name not in record.artifacts
        or (record.expires_at is not None and record.expires_at <= now)
    ):
        raise ResultNotFound("no such result")
    return results.get(job_id, name)


def erase_job(store: JobStore, results: ResultStore, job_id: str, now: float) -> JobRecord | None:
    """Erase one job: returns the record as it was (None if unknown or already erased).

    The caller cancels it when it was queued or running (``record.status`` tells).
    """
    before = store.delete(job_id, now)
    _delete_results(results, job_id)
    return before


def erase_owner(store: JobStore, results: ResultStore, owner: str, now: float) -> list[JobRecord]:
    """Erase every job and result of an owner (account deletion); returns the records as they were."""
    erased = store.delete_owner(owner, now)
    for record in erased:
        _delete_results(results, record.id)
    log.info("erased %d job(s) of an owner", len(erased))
    return erased


def sweep_expired(store: JobStore, results: ResultStore, now: float) -> int:
    """Unlink expired results and mark their jobs ``expired``; returns how many jobs expired.

    Files go first: a crash in between leaves a record the next sweep finishes.
    """
    count = 0
    for record in store.expired(now):
        _delete_results(results, record.id)
        if store.mark_expired(record.id):
            count += 1
    if count:
        store.flush_erasures()
        log.info("expired %d job(s)", count)
    return count


def sweep_orphans(store: JobStore, results: ResultStore) -> int:
    """Start-up only: remove partial writes and results whose job cannot serve them.

    Not safe while a worker runs (a result is stored just before its job is marked
    succeeded), which is why it belongs before the worker starts.
    """
    removed = results.sweep_partial()
    live = store.live_result_ids()
    for job_id in list(results.job_ids()):
        if job_id not in live:
            removed += _delete_results(results, job_id) or 1
    if removed:
        log.warning("start-up sweep removed %d orphan file(s) from the data directory", removed)
    return removed


class RetentionSweeper:
    """Runs :func:`sweep_expired` every ``interval`` seconds on the event loop (work in a thread)."""

    def __init__(
        self, store: JobStore, results: ResultStore, interval: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.results = results
        self.interval = max(0.05, float(interval))
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    def sweep_once(self) -> int:
        return sweep_expired(self.store, self.results, self.clock())

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="retention-sweeper")

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.sweep_once)
            except Exception:  # noqa: BLE001 - one bad sweep must not end sweeping
                log.exception("retention sweep failed")
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
