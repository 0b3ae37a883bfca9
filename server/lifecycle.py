"""The storage side of the server in one object: jobs, results, retention, webhooks.

The app builds one :class:`DataLifecycle` in its lifespan::

    lifecycle = DataLifecycle(settings.storage)
    interrupted = lifecycle.recover()      # before the worker starts
    lifecycle.start()                      # on the event loop: sweeper
    ...
    await lifecycle.aclose()               # on shutdown

Submission: ``lifecycle.new_job(...)`` (validates retention and webhook, 422 on
bad values; handles Idempotency-Key). Worker: ``start_job`` / ``publish`` /
``end_job``, then ``notify`` (thread-safe). Routes: ``read`` (404 unless live),
``erase_job`` and ``erase_owner`` (the caller cancels records that were active).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Literal

import httpx
import msgspec

from lift3d.settings import StorageSettings
from lift3d.errors import Lift3dError
from server import retention
from server.jobstore import JobRecord, JobStore, new_job_id
from server.results import ResultStore, open_result_store
from server.webhooks import WebhookNotifier, check_webhook_request

log = logging.getLogger("lift3d.lifecycle")

LOCK_FILENAME = "lift3d.lock"


class DataDirInUse(Lift3dError):
    """Another live lift3d process owns this data directory (its start-up would fail its jobs)."""

    code = "data_dir_in_use"
    http_status = 503


def lock_data_dir(data_path: Path) -> int:
    """Hold an exclusive lock on the data dir for this process's life; the kernel drops it on any exit."""
    fd = os.open(data_path / LOCK_FILENAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirInUse(f"the data directory {data_path} is in use by another lift3d process") from None
    return fd


def request_hash(body: bytes, fields: dict[str, Any]) -> str:
    """Fingerprint of a submission for Idempotency-Key comparison (never the bytes themselves)."""
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(body).digest())
    digest.update(msgspec.json.encode(fields, order="sorted"))
    return digest.hexdigest()


class DataLifecycle:
    def __init__(
        self,
        settings: StorageSettings,
        *,
        results: ResultStore | None = None,
        http_client: httpx.AsyncClient | None = None,
        base_url: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        settings.data_path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd: int | None = None
        self.store = JobStore.in_data_dir(settings.data_path)
        self.results = results if results is not None else open_result_store(settings)
        self.notifier = WebhookNotifier(settings, self.store, client=http_client, base_url=base_url)
        self.sweeper = retention.RetentionSweeper(self.store, self.results, settings.sweep_interval_seconds, clock)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Jobs the previous process left unfinished: their webhooks go out once the loop runs.
        self._interrupted_ids: list[str] = []

    # -- start-up and shutdown ---------------------------------------------

    def recover(self) -> list[JobRecord]:
        """Start-up, before the worker runs: fail interrupted jobs, drop orphans, expire what is due.

        Takes the data-dir lock first: a second live server on the same directory would
        otherwise fail the first one's running jobs and sweep its in-flight results.
        """
        if self._lock_fd is None:
            self._lock_fd = lock_data_dir(self.settings.data_path)
        now = self.clock()
        interrupted = self.store.mark_interrupted(now)
        if interrupted:
            log.warning("%d job(s) were interrupted by the previous shutdown", len(interrupted))
        self._interrupted_ids = [record.id for record in interrupted if record.webhook_url]
        retention.sweep_orphans(self.store, self.results)
        retention.sweep_expired(self.store, self.results, now)
        return interrupted

    def start(self) -> None:
        """On the event loop: start the sweeper, remember the loop for ``notify``, and send the
        webhooks of jobs that ``recover`` found interrupted (their receivers are waiting too)."""
        self._loop = asyncio.get_running_loop()
        self.sweeper.start()
        for job_id in self._interrupted_ids:
            self.notifier.schedule(job_id)
        self._interrupted_ids = []

    async def aclose(self, webhook_grace_seconds: float = 10.0) -> None:
        await self.sweeper.stop()
        await self.notifier.aclose(webhook_grace_seconds)
        self.close()

    def close(self) -> None:
        """Close the job store and release the data-dir lock (``aclose`` does this too)."""
        self.store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- submission --------------------------------------------------------

    def new_job(
        self,
        *,
        options: dict[str, Any],
        owner: str | None = None,
        retention_seconds: int | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        weights_mode: str | None = None,
        job_id: str | None = None,
    ) -> tuple[JobRecord, bool]:
        """Create a queued job; ``(record, created)``. 422s: retention, webhook, reused key."""
        record = JobRecord(
            id=job_id or new_job_id(),
            created_at=self.clock(),
            retention_seconds=retention.resolve_retention(retention_seconds, self.settings),
            owner=owner,
            options=options,
            seed=options.get("seed"),
            webhook_url=check_webhook_request(webhook_url, self.settings),
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            weights_mode=weights_mode,
        )
        return self.store.create(record)

    # -- worker --------------------------------------------------------------

    def start_job(self, job_id: str) -> JobRecord | None:
        """queued -> running; None means skip it (cancelled or erased while queued)."""
        return self.store.start(job_id, self.clock())

    def publish(self, job_id: str, artifacts: dict[str, bytes], **fields: Any) -> JobRecord | None:
        """Store artifacts (encrypted) and mark the job succeeded; None if it was erased meanwhile.

        ``fields`` are record fields such as ``result``, ``timings``, ``seed``, ``options``.
        """
        return retention.publish_results(self.store, self.results, job_id, artifacts, self.clock(), **fields)

    def end_job(
        self,
        job_id: str,
        status: Literal["failed", "cancelled"],
        code: str,
        message: str,
        **fields: Any,
    ) -> JobRecord | None:
        return self.store.finish(job_id, status, self.clock(), error_code=code, error_message=message, **fields)

    def notify(self, job_id: str) -> None:
        """Send the job-ended webhook (if any), from the loop or from the worker thread."""
        loop = self._loop
        if loop is None:
            log.warning("webhook for job %s not sent: lifecycle not started", job_id)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self.notifier.schedule(job_id)
        else:
            loop.call_soon_threadsafe(self.notifier.schedule, job_id)

    # -- reads and erasure ---------------------------------------------------

    def read(self, job_id: str, name: str) -> bytes:
        """A live artifact (``model.glb``, ``views.png``); ResultNotFound (404) otherwise."""
        return retention.read_result(self.store, self.results, job_id, name, self.clock())

    def erase_job(self, job_id: str) -> JobRecord | None:
        return retention.erase_job(self.store, self.results, job_id, self.clock())

    def erase_owner(self, owner: str) -> list[JobRecord]:
        return retention.erase_owner(self.store, self.results, owner, self.clock())

    def owner_jobs(self, owner: str) -> list[JobRecord]:
        return self.store.list_by_owner(owner)
