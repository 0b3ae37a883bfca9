"""Process set-up: no core files and a non-dumpable process (issue 13, class 4)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.paths import REPO

PROBE = """
import ctypes, json, resource
from lift3d.process import forbid_core_dumps
before = resource.getrlimit(resource.RLIMIT_CORE)
done = forbid_core_dumps()
libc = ctypes.CDLL(None)
print(json.dumps({"before": before, "after": resource.getrlimit(resource.RLIMIT_CORE),
                  "dumpable": libc.prctl(3, 0, 0, 0, 0), "done": done}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux")
def test_forbid_core_dumps_in_a_fresh_process() -> None:
    # A soft limit above 0 first, so the test sees the change (a shell may already have set 0).
    command = ["bash", "-c", f'ulimit -S -c 1024 2>/dev/null; exec "{sys.executable}" -c "$0"', PROBE]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["after"] == [0, 0]
    assert result["dumpable"] == 0  # PR_GET_DUMPABLE
    assert result["done"] == {"rlimit_core": True, "not_dumpable": True}
