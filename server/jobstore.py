"""Job records in SQLite (WAL) inside the data directory.

A record is everything about a job except its bytes: the upload never reaches
this store (it lives in memory only) and results live in the result store.
One connection is shared behind a lock, because the GPU worker thread and the
event loop both write and SQLite statements here take microseconds.

Erasure keeps a stripped record (id, status, timestamps, stage timings) so that
operations (metrics, capacity planning, "was job X ever run?") still work while
nothing about the owner, the request or the result remains.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, get_args

import msgspec

from lift3d.errors import IdempotencyKeyReused

log = logging.getLogger("lift3d.jobstore")

# The job-status vocabulary, defined here once.
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
ACTIVE: frozenset[str] = frozenset({"queued", "running"})
# How the worker (or an erasure) ends a job.
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
# Every status a job never leaves again: an SSE stream ends on these.
ENDED: frozenset[str] = TERMINAL | {"expired"}
INTERRUPTED = "interrupted"

DB_FILENAME = "jobs.sqlite3"
SCHEMA_VERSION = 1


class JobRecord(msgspec.Struct, kw_only=True):
    """One job as stored. Timestamps are Unix seconds (float)."""

    id: str
    created_at: float
    retention_seconds: int
    status: JobStatus = "queued"
    owner: str | None = None
    stage: str | None = None
    progress: float = 0.0
    options: dict[str, Any] = {}
    started_at: float | None = None
    finished_at: float | None = None
    # Set when the job ends: finished_at + retention_seconds.
    expires_at: float | None = None
    timings: dict[str, float] = {}
    seed: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    # Result metadata (bytes, vertices, faces, texture_size, watertight, ...), never the bytes.
    result: dict[str, Any] = {}
    # Names of stored artifacts in the result store, e.g. ["model.glb", "views.png"].
    artifacts: list[str] = []
    weights_mode: str | None = None
    webhook_url: str | None = None
    webhook_status: Literal["pending", "delivered", "failed"] | None = None
    webhook_attempts: int = 0
    webhook_error: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    # Set when the job was erased (DELETE of the job or of its owner); such records are hidden.
    erased_at: float | None = None



_FIELDS: tuple[str, ...] = JobRecord.__struct_fields__
_JSON_FIELDS = frozenset({"options", "timings", "result", "artifacts"})
# What a stripped (erased or expired) record keeps: what operations need, nothing personal.
OPERATIONAL_FIELDS = frozenset(
    {"id", "status", "created_at", "started_at", "finished_at", "expires_at", "retention_seconds", "timings", "erased_at"}
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    retention_seconds INTEGER NOT NULL,
    status TEXT NOT NULL,
    owner TEXT,
    stage TEXT,
    progress REAL NOT NULL DEFAULT 0,
    options TEXT NOT NULL DEFAULT '{{}}',
    started_at REAL,
    finished_at REAL,
    expires_at REAL,
    timings TEXT NOT NULL DEFAULT '{{}}',
    seed INTEGER,
    error_code TEXT,
    error_message TEXT,
    result TEXT NOT NULL DEFAULT '{{}}',
    artifacts TEXT NOT NULL DEFAULT '[]',
    weights_mode TEXT,
    webhook_url TEXT,
    webhook_status TEXT,
    webhook_attempts INTEGER NOT NULL DEFAULT 0,
    webhook_error TEXT,
    idempotency_key TEXT,
    request_hash TEXT,
    erased_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs(owner) WHERE owner IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_idempotency_key ON jobs(idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_by_expiry ON jobs(expires_at)
    WHERE expires_at IS NOT NULL AND erased_at IS NULL;
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status);
PRAGMA user_version = {SCHEMA_VERSION};
"""


def replayed(existing: JobRecord, request_hash: str | None) -> JobRecord:
    """``existing`` when a reused Idempotency-Key came with the same request; 422 otherwise."""
    if existing.request_hash != request_hash:
        raise IdempotencyKeyReused("this Idempotency-Key was already used with a different request")
    return existing


def new_job_id() -> str:
    """An unguessable, URL- and path-safe id (22 chars)."""
    return secrets.token_urlsafe(16)


def _reject_bytes(value: Any, where: str) -> None:
    """The store must never hold image bytes: refuse any bytes-like value in JSON fields."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"refusing to store bytes in job field {where!r}")
    if isinstance(value, dict):
        for key, item in value.items():
            _reject_bytes(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for item in value:
            _reject_bytes(item, where)


def _to_column(name: str, value: Any) -> Any:
    if name in _JSON_FIELDS:
        _reject_bytes(value, name)
        return msgspec.json.encode(value).decode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"refusing to store bytes in job field {name!r}")
    return value


def _from_row(row: sqlite3.Row) -> JobRecord:
    data = {key: row[key] for key in row.keys()}
    for name in _JSON_FIELDS:
        data[name] = msgspec.json.decode(data[name])
    return msgspec.convert(data, JobRecord)


class JobStore:
    """Thread-safe job records. Every method is a short transaction under one lock."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Created private before SQLite opens it: its -wal and -shm files copy these permissions.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        self._lock = threading.RLock()
        with self._lock:
            self._db = self._connect()
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # Autocommit mode; multi-statement changes use explicit BEGIN IMMEDIATE.
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=10000")
        # Erased rows are overwritten with zeros rather than left in free pages.
        db.execute("PRAGMA secure_delete=ON")
        return db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT under the lock; on any error, roll back and re-raise *that* error.

        On a full disk the COMMIT fails and the ROLLBACK can fail too. The first error is
        the one that explains the job's failure, and a connection left inside a
        transaction would refuse every later BEGIN, so it is replaced: once space is
        freed, the next call works without a restart.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error as error:
            log.warning("job store rollback failed (%s)", type(error).__name__)
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = self._connect()

    @classmethod
    def in_data_dir(cls, data_path: Path | str) -> "JobStore":
        return cls(Path(data_path) / DB_FILENAME)

    def flush_erasures(self) -> None:
        """Checkpoint and truncate the WAL, whose older frames still hold pre-erasure pages."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- reads ---------------------------------------------------------------

    def _select(self, where: str, params: Iterable[Any] = ()) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM jobs WHERE {where}", tuple(params)).fetchall()
        return [_from_row(row) for row in rows]

    def get(self, job_id: str, *, include_erased: bool = False) -> JobRecord | None:
        """The record, or None when unknown (or erased, unless ``include_erased``).

        Expired records are returned (status ``expired``, stripped) so a client can
        tell "expired" from "never existed"; erased ones are gone for clients.
        """
        where = "id = ?" if include_erased else "id = ? AND erased_at IS NULL"
        found = self._select(where, (job_id,))
        return found[0] if found else None

    def find_by_idempotency_key(self, key: str) -> JobRecord | None:
        found = self._select("idempotency_key = ? AND erased_at IS NULL", (key,))
        return found[0] if found else None

    def list_by_owner(self, owner: str) -> list[JobRecord]:
        """The owner's live jobs (not erased, not expired), oldest first."""
        return self._select(
            "owner = ? AND erased_at IS NULL AND status != 'expired' ORDER BY created_at, id", (owner,)
        )

    def expired(self, now: float) -> list[JobRecord]:
        """Ended jobs whose retention has run out and which the sweeper has not handled yet."""
        placeholders = ",".join("?" * len(TERMINAL))
        return self._select(
            f"erased_at IS NULL AND status IN ({placeholders}) AND expires_at IS NOT NULL AND expires_at <= ?",
            (*sorted(TERMINAL), now),
        )

    def live_result_ids(self, now: float | None = None) -> set[str]:
        """Jobs that may own stored results: succeeded and neither erased nor expired (by ``now`` too, if given)."""
        where, params = "status = 'succeeded' AND erased_at IS NULL", ()
        if now is not None:
            where, params = where + " AND (expires_at IS NULL OR expires_at > ?)", (now,)
        with self._lock:
            rows = self._db.execute(f"SELECT id FROM jobs WHERE {where}", params).fetchall()
        return {row["id"] for row in rows}

    def count_by_status(self) -> dict[str, int]:
        """Records by status, with erased ones under ``erased`` (for the jobs-by-status gauge)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT CASE WHEN erased_at IS NULL THEN status ELSE 'erased' END AS bucket, COUNT(*) AS n"
                " FROM jobs GROUP BY bucket"
            ).fetchall()
        counts = {status: 0 for status in (*JOB_STATUSES, "erased")}
        counts.update({row["bucket"]: row["n"] for row in rows})
        return counts

    # -- writes --------------------------------------------------------------

    def create(self, record: JobRecord) -> tuple[JobRecord, bool]:
        """Insert a new job; returns ``(record, created)``.

        With an idempotency key already in use, returns ``(existing, False)`` when
        the request hash matches and raises :class:`IdempotencyKeyReused` (422) when
        it does not, atomically, so two racing submissions make one job.
        """
        if record.status not in ACTIVE:
            raise ValueError(f"a new job starts queued or running, not {record.status!r}")
        data = msgspec.structs.asdict(record)
        columns = ",".join(_FIELDS)
        values = [_to_column(name, data[name]) for name in _FIELDS]
        with self._lock:
            with self._transaction():
                if record.idempotency_key is not None:
                    row = self._db.execute(
                        "SELECT * FROM jobs WHERE idempotency_key = ? AND erased_at IS NULL",
                        (record.idempotency_key,),
                    ).fetchone()
                    if row is not None:
                        # A return inside the block commits the (read-only) transaction.
                        return replayed(_from_row(row), record.request_hash), False
                self._db.execute(
                    f"INSERT INTO jobs ({columns}) VALUES ({','.join('?' * len(_FIELDS))})", values
                )
        return record, True

    def update(self, job_id: str, **fields: Any) -> JobRecord | None:
        """Set fields of a job that is not erased; returns the new record, or None.

        None tells the caller the job was erased meanwhile (for instance, the worker
        must then drop the result it was about to publish).
        """
        return self._update(job_id, fields, "erased_at IS NULL")

    def start(self, job_id: str, now: float) -> JobRecord | None:
        """queued -> running; None when the job is no longer queued (cancelled, erased)."""
        return self._update(job_id, {"status": "running", "started_at": now}, "erased_at IS NULL AND status = 'queued'")

    def finish(
        self,
        job_id: str,
        status: Literal["succeeded", "failed", "cancelled"],
        now: float,
        **fields: Any,
    ) -> JobRecord | None:
        """End an active job and start its retention clock (expires_at = now + retention).

        Only a queued or running, non-erased job can end, so a late worker never
        overwrites an erasure or an earlier ending; None tells the caller so.
        """
        if status not in TERMINAL:
            raise ValueError(f"{status!r} is not an ending status")
        fields = {"status": status, "finished_at": now, **fields}
        with self._lock:
            with self._transaction():
                row = self._db.execute(
                    "SELECT retention_seconds FROM jobs WHERE id = ? AND erased_at IS NULL AND status IN ('queued','running')",
                    (job_id,),
                ).fetchone()
                if row is None:
                    return None
                fields["expires_at"] = now + row["retention_seconds"]
                record = self._update(job_id, fields, "erased_at IS NULL")
        return record

    def _update(self, job_id: str, fields: dict[str, Any], condition: str) -> JobRecord | None:
        unknown = set(fields) - set(_FIELDS)
        if unknown or "id" in fields:
            raise KeyError(f"cannot update job fields {sorted(unknown | ({'id'} & set(fields)))}")
        if not fields:
            return self.get(job_id)
        assignments = ",".join(f"{name} = ?" for name in fields)
        values = [_to_column(name, value) for name, value in fields.items()]
        with self._lock:
            row = self._db.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ? AND {condition} RETURNING *", (*values, job_id)
            ).fetchone()
        return _from_row(row) if row is not None else None

    def _strip(self, job_id: str, status: str, extra: dict[str, Any]) -> None:
        """Keep only OPERATIONAL_FIELDS; every other column goes back to its empty default."""
        blank = msgspec.structs.asdict(JobRecord(id=job_id, created_at=0.0, retention_seconds=0))
        cleared = {name: blank[name] for name in _FIELDS if name not in OPERATIONAL_FIELDS}
        cleared.update(status=status, **extra)
        self._update(job_id, cleared, "1 = 1")

    def delete(self, job_id: str, now: float) -> JobRecord | None:
        """Erase a job: returns the record as it was (the caller cancels and unlinks results).

        A queued or running job is recorded as ``cancelled``. Idempotent: None when the
        job is unknown or already erased.
        """
        with self._lock:
            with self._transaction():
                row = self._db.execute("SELECT * FROM jobs WHERE id = ? AND erased_at IS NULL", (job_id,)).fetchone()
                before = _from_row(row) if row is not None else None
                if before is not None:
                    self._erase_locked(before, now)
        if before is not None:
            self.flush_erasures()
        return before

    def delete_owner(self, owner: str, now: float) -> list[JobRecord]:
        """Erase every job of an owner (account deletion); returns the records as they were."""
        with self._lock:
            with self._transaction():
                rows = self._db.execute("SELECT * FROM jobs WHERE owner = ? AND erased_at IS NULL", (owner,)).fetchall()
                before = [_from_row(row) for row in rows]
                for record in before:
                    self._erase_locked(record, now)
        if before:
            self.flush_erasures()
        return before

    def _erase_locked(self, record: JobRecord, now: float) -> None:
        extra: dict[str, Any] = {"erased_at": now}
        status = record.status
        if status in ACTIVE:
            status = "cancelled"
            extra["finished_at"] = now
        self._strip(record.id, status, extra)

    def mark_expired(self, job_id: str) -> bool:
        """Strip an ended job to its operational fields with status ``expired``."""
        with self._lock:
            with self._transaction():
                row = self._db.execute(
                    "SELECT status FROM jobs WHERE id = ? AND erased_at IS NULL", (job_id,)
                ).fetchone()
                done = row is not None and row["status"] in TERMINAL
                if done:
                    self._strip(job_id, "expired", {})
        return done

    def mark_interrupted(self, now: float) -> list[JobRecord]:
        """On start-up: jobs left queued or running by a dead process fail with ``interrupted``.

        Their uploads were only ever in memory, so nothing else is left to clean. The
        retention clock starts now, like any other ending.
        """
        with self._lock:
            rows = self._db.execute(
                "UPDATE jobs SET status = 'failed', error_code = ?, error_message = ?, stage = NULL,"
                " finished_at = ?, expires_at = ? + retention_seconds"
                " WHERE status IN ('queued','running') AND erased_at IS NULL RETURNING *",
                (INTERRUPTED, "the server stopped before this job finished", now, now),
            ).fetchall()
        return [_from_row(row) for row in rows]
