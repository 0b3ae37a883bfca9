"""Count byte markers in another process's memory through ``/proc/<pid>/mem``.

Reads every readable mapping listed in ``/proc/<pid>/maps`` (heap, anonymous
mappings, stacks), in blocks with an overlap so a marker across a block edge is
still found once. Needs the right to read the process's memory: the same user with
the process dumpable, or root (``lift3d`` sets ``PR_SET_DUMPABLE`` 0, so only root
can); :func:`can_read_memory` says whether this process has it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

BLOCK = 64 * 1024 * 1024
# Kernel-provided mappings that cannot be read through /proc/<pid>/mem.
_SKIPPED = ("[vvar]", "[vsyscall]", "[vvar_vclock]")


def _regions(pid: int) -> list[tuple[int, int]]:
    regions = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        span, perms = fields[0], fields[1]
        name = fields[5] if len(fields) > 5 else ""
        # Private writable memory is where a process's own copies live (file-backed
        # read-only mappings are library code and data, identical on disk).
        if not perms.startswith("rw") or name in _SKIPPED:
            continue
        start, end = (int(part, 16) for part in span.split("-"))
        regions.append((start, end))
    return regions


def can_read_memory(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as memory:
            for start, end in _regions(pid):
                memory.seek(start)
                memory.read(min(4096, end - start))
                return True
    except OSError:
        return False
    return False


def count_markers(pid: int, markers: Iterable[bytes]) -> dict[bytes, int]:
    """How many times each marker occurs in the writable memory of ``pid``."""
    needles = list(markers)
    overlap = max(len(needle) for needle in needles) - 1
    counts = dict.fromkeys(needles, 0)
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as memory:
        for start, end in _regions(pid):
            position, tail = start, b""
            while position < end:
                size = min(BLOCK, end - position)
                try:
                    memory.seek(position)
                    block = memory.read(size)
                except OSError:
                    break  # unmapped meanwhile, or a guard page
                window = tail + block
                for needle in needles:
                    # Occurrences lying wholly in the carried-over tail were counted in the last block.
                    counts[needle] += window.count(needle) - tail.count(needle)
                tail = window[-overlap:] if overlap else b""
                position += size
    return counts
