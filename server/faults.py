"""Operating-system and device faults turned into the typed errors jobs fail with.

A full disk, a process out of file descriptors or a GPU out of memory is not the
client's fault and not a bug: each gets its own retryable code, so a job fails
``storage_full`` instead of ``internal_error`` and an operator can alert on it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sqlite3
from pathlib import Path
from typing import Iterator

from lift3d.errors import (
    GpuOutOfMemory,
    Lift3dError,
    StorageFull,
    StorageUnavailable,
    TooManyOpenFiles,
)

# EFBIG: over the file-size limit (RLIMIT_FSIZE, or the filesystem's): nothing more fits either.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_NO_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})
# Primary result codes (https://sqlite.org/rescode.html); extended codes keep them in the low byte.
_SQLITE_FULL = 13
# BUSY, LOCKED, READONLY, IOERR, CORRUPT, CANTOPEN, PROTOCOL: the file or the disk, not our SQL.
# SQLITE_ERROR (a bad statement) is left out: that is a bug and stays internal_error.
_SQLITE_STORAGE = frozenset({5, 6, 8, 10, 11, 14, 15})


def descriptors_exhausted() -> bool:
    """Whether this process cannot open one more file now (SQLite reports EMFILE as CANTOPEN or IOERR)."""
    try:
        os.close(os.dup(2))
    except OSError as error:
        return error.errno in _NO_DESCRIPTORS
    return False


def storage_error(error: BaseException) -> Lift3dError | None:
    """The typed error for a failed job-store or result-store operation; None if it is not a storage fault."""
    if isinstance(error, Lift3dError):
        return None
    if isinstance(error, OSError):
        if error.errno in _DISK_FULL:
            return StorageFull("the data directory's disk is full; free space and retry")
        if error.errno in _NO_DESCRIPTORS:
            return TooManyOpenFiles("the server has run out of file descriptors; retry shortly")
        return StorageUnavailable(f"the data directory cannot be written ({errno.errorcode.get(error.errno or 0, 'I/O error')})")
    if isinstance(error, sqlite3.Error):
        primary = (getattr(error, "sqlite_errorcode", 0) or 0) & 0xFF
        if primary == _SQLITE_FULL or "disk is full" in str(error):
            return StorageFull("the data directory's disk is full; free space and retry")
        if primary in _SQLITE_STORAGE:
            if descriptors_exhausted():
                return TooManyOpenFiles("the server has run out of file descriptors; retry shortly")
            return StorageUnavailable("the job store cannot be read or written now")
    return None


@contextlib.contextmanager
def storage_faults() -> Iterator[None]:
    """Re-raise storage faults as their typed error (the original stays as ``__cause__`` for the log)."""
    try:
        yield
    except Exception as error:
        typed = storage_error(error)
        if typed is None:
            raise
        raise typed from error


def is_gpu_out_of_memory(error: BaseException) -> bool:
    # torch is imported already wherever a stage could raise this; no import for a server without it.
    import sys

    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom is not None and isinstance(error, oom):
        return True
    # torch before 1.13 raised a plain RuntimeError with this message.
    return isinstance(error, RuntimeError) and str(error).startswith("CUDA out of memory")


def gpu_out_of_memory() -> GpuOutOfMemory:
    return GpuOutOfMemory("the GPU ran out of memory during this job; retry (smaller options use less memory)")


def free_gpu_cache() -> None:
    """Hand cached CUDA blocks back after an out-of-memory failure, so the next job starts clean."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return
    import gc

    gc.collect()  # the failed job's tensors are garbage once its traceback is gone
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def job_failure(error: BaseException) -> Lift3dError | None:
    """The typed failure for an untyped error a stage raised: GPU memory, disk or descriptors ran out; None for a bug.

    Storage calls raise their typed errors already; any other OSError in a stage (a
    missing model file, a library's own I/O) stays ``internal_error``.
    """
    if is_gpu_out_of_memory(error):
        return gpu_out_of_memory()
    typed = storage_error(error)
    return typed if isinstance(typed, (StorageFull, TooManyOpenFiles)) else None


PROBE_BYTES = 1 << 20
PROBE_PREFIX = ".lift3d-probe-"


def probe_write(folder: Path) -> None:
    """Write, sync and remove a 1 MiB file: raises the OSError a full disk or a full fd table gives."""
    path = folder / f"{PROBE_PREFIX}{secrets.token_hex(4)}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(bytes(PROBE_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        path.unlink(missing_ok=True)
