"""A switchable full disk for the server tests, in process or in a subprocess server.

While the switch is on, the job store fails the way SQLite does on a full disk
(writes in autocommit fail; in a transaction the COMMIT fails and the ROLLBACK
fails as well, leaving the connection inside the transaction), result files fail
with ENOSPC, and so does the storage probe. Everything else is real.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path
from typing import Any, Callable

import server.storage
from server.jobstore import JobStore
from server.results import EncryptedFileStore

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def sqlite_full() -> sqlite3.OperationalError:
    error = sqlite3.OperationalError("database or disk is full")
    error.sqlite_errorcode = 13  # type: ignore[attr-defined]
    error.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
    return error


class FaultyConnection:
    """A sqlite3 connection whose writes fail while ``is_full()``; reads and BEGIN still work."""

    def __init__(self, db: sqlite3.Connection, is_full: Callable[[], bool]) -> None:
        self._db = db
        self._is_full = is_full

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        if self._is_full():
            verb = sql.lstrip().split(None, 1)[0].upper()
            if verb in ("COMMIT", "ROLLBACK") or (verb in _WRITES and not self._db.in_transaction):
                raise sqlite_full()
        return self._db.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._db, name, value)  # row_factory and the like belong to the real connection


class DiskFull:
    """Fill and free the disk; ``install`` patches the stores (``monkeypatch`` or, in a subprocess, for good)."""

    def __init__(self, is_full: Callable[[], bool] | None = None, error_number: int = errno.ENOSPC) -> None:
        self.full = False
        self._is_full = is_full or (lambda: self.full)
        self.error_number = error_number

    def is_full(self) -> bool:
        return self._is_full()

    def _os_error(self) -> OSError:
        return OSError(self.error_number, "No space left on device" if self.error_number == errno.ENOSPC else "fault")

    def install(self, setattr: Callable[[Any, str, Any], None], stores: list[JobStore] = ()) -> None:  # type: ignore[assignment]
        real_connect = sqlite3.connect
        real_put = EncryptedFileStore.put
        real_probe = getattr(server.storage, "probe_write", None)
        fault = self

        def connect(*args: Any, **kwargs: Any) -> Any:
            return FaultyConnection(real_connect(*args, **kwargs), fault.is_full)

        def put(store: EncryptedFileStore, job_id: str, name: str, data: bytes) -> int:
            if fault.is_full():
                raise fault._os_error()
            return real_put(store, job_id, name, data)

        def probe(folder: Path) -> None:
            if fault.is_full():
                raise fault._os_error()
            real_probe(folder)  # type: ignore[misc]

        setattr(sqlite3, "connect", connect)  # every connection opened from now on, reconnects included
        setattr(EncryptedFileStore, "put", put)
        if real_probe is not None:
            setattr(server.storage, "probe_write", probe)
        for store in stores:
            setattr(store, "_db", FaultyConnection(store._db, fault.is_full))


def install_file_switch(flag: Path) -> DiskFull:
    """For a subprocess server: the disk is full while ``flag`` exists."""
    fault = DiskFull(is_full=flag.exists)
    fault.install(setattr)
    return fault
