"""Process-wide set-up every entry point shares: offline weights, logs that leak nothing, no core files.

Called once at the top of ``serve``, ``generate`` and the RunPod worker, never at import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def go_offline() -> None:
    """Weights are pulled ahead (`lift3d weights pull`): serving never reaches the Hub."""
    os.environ["HF_HUB_OFFLINE"] = "1"


def configure_logging(level: int = logging.INFO) -> None:
    """Our loggers to stderr. Records carry ids, sizes, timings and codes; never bytes, names, IPs or keys."""
    root = logging.getLogger()
    if not any(getattr(handler, "_lift3d", False) for handler in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler._lift3d = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request URL at INFO (webhook and presigned URLs may carry secrets);
    # uvicorn.access logs client IPs; Pillow logs EXIF tag values at DEBUG.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("PIL").setLevel(logging.WARNING)


PR_SET_DUMPABLE = 4


def forbid_core_dumps() -> dict[str, bool]:
    """No core file, and no memory reads by other users' tools: the process holds users' photos.

    ``RLIMIT_CORE`` 0 stops the kernel writing a core file on a crash (a core holds the
    whole heap, uploads included). ``PR_SET_DUMPABLE`` 0 (Linux) also makes
    ``/proc/<pid>/mem``, ``ptrace`` and core pipes unavailable to anyone but root.
    Returns which of the two took effect.
    """
    done = {"rlimit_core": False, "not_dumpable": False}
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        done["rlimit_core"] = True
    except (ImportError, ValueError, OSError):
        pass
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            done["not_dumpable"] = libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
        except (OSError, AttributeError):
            pass
    return done


def prepare_process(log_level: int = logging.INFO) -> None:
    forbid_core_dumps()
    go_offline()
    configure_logging(log_level)
