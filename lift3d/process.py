"""Process-wide set-up every entry point shares: offline weights, logs that leak nothing, no core files, CPU threads.

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


# OpenMP and the BLAS libraries read these once, when they load: set them before torch or
# numpy is imported (the CLI does, see set_thread_environment) for them to count.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def machine_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers narrow), not the host's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_cpu_threads(cores: int) -> int:
    """Half the cores: the host lane's finishing, the HTTP edge and the device lane's launches
    each need a core free; OpenMP threads waiting on a busy core made a bake 7x slower."""
    return max(1, cores // 2)


def resolve_cpu_threads(setting: int, cores: int | None = None) -> int:
    """``engine.cpu_threads`` made concrete: 0 is the default share, and never more than the cores."""
    cores = cores or machine_cores()
    wanted = setting if setting > 0 else default_cpu_threads(cores)
    return max(1, min(wanted, cores))


def set_thread_environment(threads: int) -> None:
    """OpenMP/BLAS thread counts for libraries not loaded yet (the one setting wins over the environment)."""
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(threads)


def apply_cpu_threads(threads: int) -> None:
    """The environment for what loads later, and torch's intra-op pool now."""
    set_thread_environment(threads)
    import torch

    torch.set_num_threads(threads)


def prepare_process(log_level: int = logging.INFO, cpu_threads: int = 0) -> None:
    forbid_core_dumps()
    go_offline()
    configure_logging(log_level)
    apply_cpu_threads(resolve_cpu_threads(cpu_threads))
