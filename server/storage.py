"""The storage side of the server in one object: job records, results, retention, webhooks.

Routes and the worker call :class:`Storage` directly, one hop per operation; it
holds the job store (SQLite), the result store (encrypted files) and the webhook
notifier, and it is the only place that decides what "erased" and "expired" mean:
result files are unlinked and the record is stripped to what operations need.

Life of one server::

    storage = Storage(settings.storage)
    storage.recover()           # before the worker starts: interrupted jobs, orphans, expiry
    storage.start()             # on the event loop: sweeper, pending webhooks
    ...
    await storage.aclose()      # on shutdown
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import httpx
import msgspec

from lift3d.errors import (
    DataDirInUse,
    InvalidOption,
    JobNotFinished,
    JobNotFound,
    JobNotSucceeded,
    Lift3dError,
    ResultExpired,
    ResultNotFound,
    StorageUnavailable,
    Unavailable,
)
from lift3d.settings import StorageSettings
from server.faults import probe_write, storage_faults
from server.jobstore import ACTIVE, OPERATIONAL_FIELDS, TERMINAL, JobRecord, JobStore, new_job_id, replayed
from server.results import ResultStore, open_result_store
from server.webhooks import WebhookNotifier, check_webhook_request

log = logging.getLogger("lift3d.storage")

LOCK_FILENAME = "lift3d.lock"
# /readyz asks the result store at most this often (a HEAD on a bucket is a network call).
STORE_CHECK_SECONDS = 2.0


class NewJob(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a submission stores about a job (never the image itself)."""

    options: dict[str, Any]
    request_hash: str
    weights_mode: str
    owner: str | None = None
    retention_seconds: int | None = None
    webhook_url: str | None = None
    idempotency_key: str | None = None


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


class Storage:
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
        # A lost key refuses the start (EncryptionKeyMissing) instead of failing every download later.
        self.results = results if results is not None else open_result_store(settings, self.store.live_result_ids(clock()))
        self.notifier = WebhookNotifier(settings, self.store, client=http_client, base_url=base_url)
        self.sweep_interval = max(0.05, float(settings.sweep_interval_seconds))
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Jobs the previous process left unfinished: their webhooks go out once the loop runs.
        self._interrupted_ids: list[str] = []
        self._store_checked: tuple[float, str | None] | None = None
        self.notifier.download_links = self.download_links
        # The storage fault last seen (storage_full, too_many_open_files, ...); cleared by recover_faults.
        self.fault: Lift3dError | None = None
        # Endings the job store could not write, by job id: reads show them, recover_faults retries them.
        self._pending_endings: dict[str, tuple[str, float, dict[str, Any]]] = {}

    # -- start-up and shutdown ---------------------------------------------

    def recover(self) -> list[JobRecord]:
        """Start-up, before the worker runs: fail interrupted jobs, drop orphans, expire what is due.

        Takes the data-dir lock first: a second live server on the same directory would
        otherwise fail the first one's running jobs and sweep its in-flight results.
        """
        if self._lock_fd is None:
            self._lock_fd = lock_data_dir(self.settings.data_path)
        interrupted = self.store.mark_interrupted(self.clock())
        if interrupted:
            log.warning("%d job(s) were interrupted by the previous shutdown", len(interrupted))
        self._interrupted_ids = [record.id for record in interrupted if record.webhook_url]
        try:
            self.sweep_orphans()
            self.sweep_expired()
        except StorageUnavailable as error:
            # Not fatal: a server that exits here restart-loops on a pod. /readyz reports the
            # store; expiry retries on every sweep, the orphan sweep at the next start.
            log.warning("start-up sweep skipped, the result store is unreachable: %s", error.message)
        return interrupted

    def start(self) -> None:
        """On the event loop: start the sweeper, remember the loop for ``notify``, and send the
        webhooks of jobs that ``recover`` found interrupted (their receivers are waiting too)."""
        self._loop = asyncio.get_running_loop()
        if self._sweeper is None:
            self._sweeper = self._loop.create_task(self._sweep_forever(), name="retention-sweeper")
        for job_id in self._interrupted_ids:
            self.notifier.schedule(job_id)
        self._interrupted_ids = []

    async def aclose(self, webhook_grace_seconds: float = 10.0) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        await self.notifier.aclose(webhook_grace_seconds)
        self.close()

    def close(self) -> None:
        """Close the job store and release the data-dir lock (``aclose`` does this too)."""
        self.store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- submission ----------------------------------------------------------

    def find_replay(self, job: NewJob) -> JobRecord | None:
        """The job an Idempotency-Key already made for this same request (422 for a different one)."""
        if job.idempotency_key is None:
            return None
        with self._faults():
            existing = self.store.find_by_idempotency_key(job.idempotency_key)
        return replayed(existing, job.request_hash) if existing is not None else None

    def new_job(self, job: NewJob, *, job_id: str | None = None) -> tuple[JobRecord, bool]:
        """Create a queued job; ``(record, created)`` (a replayed Idempotency-Key is not created).

        The one place a job's retention and webhook target are checked (422 when refused).
        """
        record = JobRecord(
            id=job_id or new_job_id(),
            created_at=self.clock(),
            retention_seconds=resolve_retention(job.retention_seconds, self.settings),
            owner=job.owner,
            options=job.options,
            seed=job.options.get("seed"),
            webhook_url=check_webhook_request(job.webhook_url, self.settings),
            idempotency_key=job.idempotency_key,
            request_hash=job.request_hash,
            weights_mode=job.weights_mode,
        )
        with self._faults():
            return self.store.create(record)

    # -- the worker's side -----------------------------------------------------

    def start_job(self, job_id: str) -> JobRecord | None:
        """queued -> running; None means skip it (cancelled or erased while queued)."""
        with self._faults():
            return self.store.start(job_id, self.clock())

    def set_stage(self, job_id: str, stage: str) -> None:
        with self._faults():
            self.store.update(job_id, stage=stage)

    def publish(self, job_id: str, artifacts: dict[str, bytes], **fields: Any) -> JobRecord | None:
        """Store a finished job's artifacts (encrypted), then mark it succeeded (starting its retention).

        Returns None when the job was erased or ended meanwhile; its artifacts are then
        removed again, so an erasure that races the worker always wins.
        """
        try:
            with self._faults():
                for name, data in artifacts.items():
                    self.results.put(job_id, name, data)
                record = self.store.finish(job_id, "succeeded", self.clock(), artifacts=sorted(artifacts), **fields)
        except StorageUnavailable as error:
            # Loud, never silent: the job fails with this code and the finished model is gone with it.
            log.error("job %s finished but its results could not be stored: %s", job_id, error.message)
            self._delete_results_if_reachable(job_id)
            raise StorageUnavailable(f"the model was generated but could not be stored ({error.message}); resubmit") from error
        except BaseException:
            self._delete_results(job_id)
            raise
        if record is None:
            self._delete_results(job_id)
        return record

    def end_job(
        self, job_id: str, status: Literal["failed", "cancelled"], code: str, message: str, **fields: Any
    ) -> JobRecord | None:
        """End a job as failed or cancelled; None when it was erased or had ended already.

        When the job store cannot write (a full disk), the ending is kept here, shown by
        reads and written by :meth:`recover_faults` once it can; the typed fault is raised.
        """
        now = self.clock()
        fields = {"error_code": code, "error_message": message, **fields}
        try:
            with self._faults():
                return self.store.finish(job_id, status, now, **fields)
        except Unavailable:
            self._pending_endings[job_id] = (status, now, fields)
            raise

    def ending_kept(self, job_id: str) -> bool:
        """Whether an ending of this job waits for the job store to be writable again."""
        return job_id in self._pending_endings

    def recover_faults(self) -> bool:
        """Periodic: once a test write succeeds, write the kept endings and clear the fault.

        True when storage is healthy again (or never failed). Runs off the event loop.
        """
        if self.fault is None and not self._pending_endings:
            return True
        try:
            with self._faults():
                probe_write(self.settings.data_path)
                for job_id, (status, now, fields) in list(self._pending_endings.items()):
                    record = self.store.finish(job_id, status, now, **fields)  # type: ignore[arg-type]
                    self._pending_endings.pop(job_id, None)
                    if record is not None:
                        self.notify(job_id)
        except Unavailable:
            return False
        if self.fault is not None:
            log.warning("storage recovered from %s", self.fault.code)
        self.fault = None
        return True

    @contextlib.contextmanager
    def _faults(self) -> Iterator[None]:
        """Storage faults as typed errors, remembered in ``fault`` for readiness."""
        try:
            with storage_faults():
                yield
        except Unavailable as error:
            if self.fault is None or self.fault.code != error.code:
                log.error("storage fault: %s (%s)", error.code, type(error.__cause__).__name__)
            self.fault = error
            raise

    def notify(self, job_id: str) -> None:
        """Send the job-ended webhook (if any), from the loop or from the worker thread."""
        loop = self._loop
        if loop is None:
            log.warning("webhook for job %s not sent: storage not started", job_id)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self.notifier.schedule(job_id)
        else:
            loop.call_soon_threadsafe(self.notifier.schedule, job_id)

    # -- reads -----------------------------------------------------------------

    def job(self, job_id: str) -> JobRecord:
        """The record as clients see it now: a kept ending applied, and expired once ``expires_at`` passed.

        The sweeper erases on its own interval; the status follows the clock in between.
        """
        with self._faults():
            record = self.store.get(job_id)
        if record is None:
            raise JobNotFound("no such job")
        pending = self._pending_endings.get(job_id)
        if pending is not None and record.status in ACTIVE:
            status, now, fields = pending
            record = msgspec.structs.replace(record, status=status, finished_at=now, **fields)  # type: ignore[arg-type]
        return self._as_of_now(record)

    def owner_jobs(self, owner: str) -> list[JobRecord]:
        with self._faults():
            records = self.store.list_by_owner(owner)
        return [record for record in records if self._as_of_now(record).status != "expired"]

    def _as_of_now(self, record: JobRecord) -> JobRecord:
        if record.status in TERMINAL and record.expires_at is not None and record.expires_at <= self.clock():
            kept = {name: getattr(record, name) for name in OPERATIONAL_FIELDS}
            return JobRecord(**{**kept, "status": "expired"})
        return record

    def result_record(self, job_id: str) -> JobRecord:
        """The record of a job whose results can be read now; the typed reason otherwise.

        Expiry is checked against the clock, not only the sweeper, so a result is never
        served past its ``expires_at`` even between sweeps.
        """
        record = self.job(job_id)
        if record.status in ACTIVE:
            raise JobNotFinished(f"the job is {record.status}; wait for it to succeed")
        expired = record.expires_at is not None and record.expires_at <= self.clock()
        if record.status == "expired" or (record.status == "succeeded" and expired):
            raise ResultExpired("the job's results expired and were erased")
        if record.status != "succeeded":
            raise JobNotSucceeded(f"the job {record.status}; it has no result")
        return record

    def download_links(self, record: JobRecord) -> dict[str, str]:
        """Presigned URLs of a succeeded job's artifacts when the store allows them (provider encryption)."""
        if record.status != "succeeded":
            return {}
        links = {}
        for name in record.artifacts:
            url = self.results.download_url(record.id, name)
            if url is not None:
                links[name] = url
        return links

    def store_problem(self) -> str | None:
        """Why the result store cannot take results now (an error code), or None; cached a few seconds."""
        now = time.monotonic()
        if self._store_checked is not None and now - self._store_checked[0] < STORE_CHECK_SECONDS:
            return self._store_checked[1]
        try:
            self.results.check()
            problem = None
        except StorageUnavailable as error:
            problem = error.code
        self._store_checked = (now, problem)
        return problem

    def read(self, job_id: str, name: str) -> bytes:
        """A live artifact (``model.glb``, ``views.png``); a typed 404/409 otherwise."""
        record = self.result_record(job_id)
        if name not in record.artifacts:
            raise ResultNotFound("no such result")
        with self._faults():
            return self.results.get(job_id, name)

    # -- erasure and expiry --------------------------------------------------------

    def erase_job(self, job_id: str) -> JobRecord | None:
        """Erase one job and its results: the record as it was, None if unknown or already erased.

        The caller cancels the job when it was queued or running (``record.status`` tells).
        Results go first, so an unreachable store refuses the erasure (503) before anything
        changed and the client can retry; then again after the record, for a result the
        worker stored in between.
        """
        self._delete_results(job_id)
        with self._faults():
            before = self.store.delete(job_id, self.clock())
        self._pending_endings.pop(job_id, None)
        self._delete_results(job_id)
        return before

    def erase_owner(self, owner: str) -> list[JobRecord]:
        """Erase every job and result of an owner (account deletion); the records as they were.

        Results first and again after the records, as in ``erase_job``.
        """
        with self._faults():
            live = self.store.list_by_owner(owner)
        for record in live:
            self._delete_results(record.id)
        with self._faults():
            erased = self.store.delete_owner(owner, self.clock())
        for record in erased:
            self._pending_endings.pop(record.id, None)
            self._delete_results(record.id)
        log.info("erased %d job(s) of an owner", len(erased))
        return erased

    def sweep_expired(self) -> int:
        """Unlink expired results and mark their jobs ``expired``; returns how many jobs expired.

        Files go first: a crash in between leaves a record the next sweep finishes.
        """
        count = 0
        for record in self.store.expired(self.clock()):
            self._delete_results(record.id)
            if self.store.mark_expired(record.id):
                count += 1
        if count:
            self.store.flush_erasures()
            log.info("expired %d job(s)", count)
        return count

    def sweep_orphans(self) -> int:
        """Start-up only: remove partial writes and results whose job cannot serve them.

        Not safe while a worker runs (a result is stored just before its job is marked
        succeeded), which is why ``recover`` runs it before the worker starts.
        """
        removed = self.results.sweep_partial()
        live = self.store.live_result_ids()
        for job_id in list(self.results.job_ids()):
            if job_id not in live:
                removed += self._delete_results(job_id) or 1
        if removed:
            log.warning("start-up sweep removed %d orphan file(s) from the data directory", removed)
        return removed

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.sweep_expired)
            except StorageUnavailable as error:  # an outage: the next sweep retries, /readyz reports it
                log.warning("retention sweep postponed: %s", error.message)
            except Exception:  # noqa: BLE001 - one bad sweep must not end sweeping
                log.exception("retention sweep failed")
            await asyncio.sleep(self.sweep_interval)

    def _delete_results_if_reachable(self, job_id: str) -> None:
        try:
            self._delete_results(job_id)
        except StorageUnavailable:
            log.warning("job %s: partial results left in the store for the start-up sweep", job_id)

    def _delete_results(self, job_id: str) -> int:
        try:
            return self.results.delete(job_id)
        except ResultNotFound:  # an id that cannot name a folder has nothing stored
            return 0
