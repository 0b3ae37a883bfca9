"""Peak resident memory of calls, each measured in a fresh subprocess through /proc (``VmHWM``).

``measure_peaks([call, ...])`` starts ``python -m tests.support.memory_probe``, which imports
each call's function by name, runs ``prepare(*prepare_args)`` (imports, test data) first, then for each
call resets the kernel's high-water mark (``/proc/self/clear_refs`` = 5), notes the
resident size as the idle level, runs the call, and reads ``VmHWM``. The calls run
under an address-space limit (``RLIMIT_AS``, idle size + ``headroom_bytes``), so a
regression fails with a ``MemoryError`` in the child instead of the machine's OOM killer.

Functions must be importable module-level callables; arguments and return values JSON.
For a server process measured from outside, ``vm_hwm_bytes(pid)``/``reset_peak(pid)``
read and reset another process of the same user.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from tests.support.paths import REPO

RESULT_MARKER = "MEMORY-PROBE-RESULT "
DEFAULT_HEADROOM = 4 * 1024**3


@dataclass(frozen=True)
class Call:
    function: Callable[..., Any]
    args: tuple[Any, ...] = ()
    label: str = ""


@dataclass(frozen=True)
class PeakMemory:
    label: str
    idle_bytes: int  # resident size when the call started
    peak_bytes: int  # VmHWM when it ended
    peak_was_reset: bool  # False where the kernel refuses clear_refs: then peak includes earlier work
    error: str | None  # "TypeName: message" when the call raised, else None
    error_type: str | None
    out_of_memory: bool  # the call hit the address-space limit (a MemoryError of any kind)
    value: Any  # the return value when JSON can hold it, else "<TypeName>"

    @property
    def above_idle(self) -> int:
        return max(0, self.peak_bytes - self.idle_bytes)


def _status_bytes(field: str, pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def vm_hwm_bytes(pid: int | str = "self") -> int:
    """The process's peak resident set size."""
    return _status_bytes("VmHWM", pid)


def vm_rss_bytes(pid: int | str = "self") -> int:
    return _status_bytes("VmRSS", pid)


def reset_peak(pid: int | str = "self") -> bool:
    """Set VmHWM back to the current resident size (Linux >= 4.0); False where that is refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _name_of(function: Callable[..., Any]) -> str:
    if "<locals>" in function.__qualname__ or function.__module__ == "__main__":
        raise ValueError(f"{function!r} must be a module-level function to run in a subprocess")
    return f"{function.__module__}:{function.__qualname__}"


def _resolve(name: str) -> Callable[..., Any]:
    module, _, qualname = name.partition(":")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def measure_peaks(
    calls: Sequence[Call],
    *,
    prepare: Callable[..., Any] | None = None,
    prepare_args: Sequence[Any] = (),
    headroom_bytes: int = DEFAULT_HEADROOM,
    timeout: float = 300.0,
) -> list[PeakMemory]:
    """Run ``calls`` one after another in one fresh interpreter; one PeakMemory each."""
    spec = {
        "prepare": _name_of(prepare) if prepare else None,
        "prepare_args": list(prepare_args),
        "calls": [{"function": _name_of(c.function), "args": list(c.args), "label": c.label or c.function.__name__} for c in calls],
        "headroom": headroom_bytes,
    }
    completed = subprocess.run(
        [sys.executable, "-m", "tests.support.memory_probe"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"memory probe failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")
    return [PeakMemory(**record) for record in json.loads(lines[-1][len(RESULT_MARKER) :])]


def measure_peak(function: Callable[..., Any], *args: Any, **options: Any) -> PeakMemory:
    return measure_peaks([Call(function, args)], **options)[0]


def _limit_address_space(headroom: int) -> None:
    current = _status_bytes("VmSize")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    wanted = current + headroom
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))


def _child() -> None:
    spec = json.loads(sys.stdin.read())
    if spec["prepare"]:
        _resolve(spec["prepare"])(*spec["prepare_args"])
    functions = [_resolve(call["function"]) for call in spec["calls"]]
    _limit_address_space(spec["headroom"])
    results = []
    for call, function in zip(spec["calls"], functions):
        was_reset = reset_peak()
        idle = vm_rss_bytes() if was_reset else vm_hwm_bytes()
        error = error_type = value = None
        out_of_memory = False
        try:
            value = function(*call["args"])
        except BaseException as raised:  # noqa: BLE001 - reported to the parent, which judges it
            error_type = type(raised).__name__
            error = f"{error_type}: {raised}"
            if not isinstance(raised, Exception):
                raise
            out_of_memory = isinstance(raised, MemoryError)
        results.append(
            {
                "label": call["label"],
                "idle_bytes": idle,
                "peak_bytes": vm_hwm_bytes(),
                "peak_was_reset": was_reset,
                "error": error,
                "error_type": error_type,
                "out_of_memory": out_of_memory,
                "value": value,
            }
        )
    sys.stdout.write(RESULT_MARKER + json.dumps(results, default=lambda o: f"<{type(o).__name__}>") + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: nothing left to measure


if __name__ == "__main__":
    _child()
