"""The finishing stage's native calls that hold the GIL, run in a helper process.

Measured on this project's 2-core machine (benchmarks/bench_lanes.py, docs/benchmarks.md):
fast-simplification 0.2.0 holds the GIL for its whole collapse loop (about 0.4 s for 300k
-> 50k faces) and xatlas for its packing (about 0.15 s). With the lanes on, the device lane
cannot launch its next kernel meanwhile. In a helper process those calls leave the host
lane's thread waiting on a pipe, without the GIL.

Only numpy, fast-simplification and xatlas are imported here (no torch), so the helper
starts quickly; it is a fresh interpreter (never a ``fork``: the parent may hold a CUDA
context). The same library on the same arrays gives the same bytes either way.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import threading
from typing import Any, Callable

import numpy as np

from lift3d.errors import NativeHelperCrashed

log = logging.getLogger("lift3d.native_calls")


def simplify(vertices: np.ndarray, faces: np.ndarray, target_faces: int) -> tuple[np.ndarray, np.ndarray]:
    import fast_simplification

    return fast_simplification.simplify(vertices, faces, target_count=target_faces)


def pack_atlas(
    positions: np.ndarray, faces: np.ndarray, uvs: np.ndarray | None, resolution: int, padding: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """xatlas: (vertex map, indices, uvs, atlas count, chart count); ``uvs`` given = pack those charts."""
    import xatlas

    atlas = xatlas.Atlas()
    chart_options = xatlas.ChartOptions()
    if uvs is not None:
        atlas.add_mesh(positions, faces, uvs=uvs)
        chart_options.use_input_mesh_uvs = True
    else:
        atlas.add_mesh(positions, faces)
    pack_options = xatlas.PackOptions()
    pack_options.resolution = resolution
    pack_options.padding = padding
    pack_options.bilinear = True
    atlas.generate(chart_options, pack_options)
    if atlas.atlas_count != 1:
        return np.zeros(0, np.uint32), np.zeros((0, 3), np.uint32), np.zeros((0, 2), np.float32), int(atlas.atlas_count), 0
    vertex_map, indices, packed = atlas[0]
    return vertex_map, indices, packed, int(atlas.atlas_count), int(atlas.chart_count)


CALLS: dict[str, Callable[..., Any]] = {"simplify": simplify, "pack_atlas": pack_atlas, "ping": lambda: "pong"}


class NativeCalls:
    """Runs ``simplify``/``pack_atlas`` here (``in_process``) or in one helper process.

    The helper is ``python -m pipeline.native_calls`` (a plain subprocess, not
    multiprocessing: nothing of the parent's ``__main__`` is imported again), speaking
    pickled ``(name, args)`` / ``(ok, value)`` frames over its stdin and stdout. Calls
    are serialised by a lock; only the host lane makes them.
    """

    def __init__(self, *, in_process: bool) -> None:
        self.in_process = in_process
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the helper (at load time, so no job pays for it)."""
        if not self.in_process:
            self.call(CALLS["ping"])

    def _helper(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
            self._process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.native_calls"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
            )
        return self._process

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        name = next((key for key, value in CALLS.items() if value is function), None)
        if self.in_process or name is None:
            return function(*args)
        with self._lock:
            helper = self._helper()
            try:
                assert helper.stdin is not None and helper.stdout is not None
                pickle.dump((name, args), helper.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                helper.stdin.flush()
                ok, value = pickle.load(helper.stdout)
            except (OSError, EOFError, pickle.UnpicklingError):
                # The helper died during this call. Never rerun it here: if this input crashed native
                # code, it would take the whole server (and every job in the lanes) down with it.
                log.error("the native-calls helper process died during %s; the next call starts a new one", name)
                self._stop(helper)
                raise NativeHelperCrashed(f"the finishing helper process died during {name}") from None
        if not ok:
            raise value
        return value

    def _stop(self, helper: subprocess.Popen[bytes]) -> None:
        if helper.stdin is not None:
            try:
                helper.stdin.close()
            except OSError:
                pass
        try:
            helper.wait(timeout=5)
        except subprocess.TimeoutExpired:
            helper.kill()
        if self._process is helper:
            self._process = None

    def close(self) -> None:
        with self._lock:
            if self._process is not None:
                self._stop(self._process)


IN_PROCESS = NativeCalls(in_process=True)
_shared: NativeCalls | None = None
_shared_lock = threading.Lock()


def shared_helper() -> NativeCalls:
    """The process's one helper (every engine in a process shares it; calls are serialised anyway)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = NativeCalls(in_process=False)
        return _shared


def serve(requests: Any, replies: Any) -> None:
    """The helper's loop: one call per frame until the parent closes the pipe."""
    while True:
        try:
            name, args = pickle.load(requests)
        except EOFError:
            return
        try:
            reply = (True, CALLS[name](*args))
        except Exception as error:  # noqa: BLE001 - handed back to the caller
            reply = (False, error)
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


if __name__ == "__main__":
    from lift3d.process import forbid_core_dumps

    forbid_core_dumps()  # it holds meshes made from users' photos, like its parent
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a library's print must not corrupt the frames
    serve(sys.stdin.buffer, protocol_out)
