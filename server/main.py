"""``lift3d serve``: uvicorn around the app, without access logs, with a graceful SIGTERM drain.

On SIGTERM (what RunPod and Docker send) the server keeps answering while it
drains: /readyz turns 503, new submissions get 503 ``shutting_down``, queued jobs
fail ``shutting_down``, the running job gets ``shutdown_grace_seconds`` to finish,
then uvicorn stops and the process exits 0. A second signal stops at once.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType

import uvicorn

from lift3d.process import prepare_process
from lift3d.settings import Settings
from pipeline.engine import Engine

log = logging.getLogger("lift3d.server")

# Seconds uvicorn waits for open connections (SSE streams end with their jobs) after the drain.
CONNECTION_CLOSE_SECONDS = 5


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT drains the job queue before it stops."""

    def __init__(self, config: uvicorn.Config, drain) -> None:  # noqa: ANN001 - a no-argument callable
        super().__init__(config)
        self._drain = drain
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's handler: it would re-raise the signal after shutdown and exit non-zero.
        if self._draining:
            log.warning("second signal: stopping now")
            self.should_exit = True
            self.force_exit = True
            return
        self._draining = True
        log.info("signal %s: draining", signal.Signals(sig).name)

        def drain_then_exit() -> None:
            try:
                self._drain()
            finally:
                self.should_exit = True

        threading.Thread(target=drain_then_exit, name="lift3d-drain", daemon=True).start()


def data_dir_problem(settings: Settings) -> str | None:
    """Another live server owns the data dir, or None.

    The lifespan takes the real lock (in-process apps need it too); probing it here
    first turns a refused start into one line instead of a lifespan traceback.
    """
    from lift3d.errors import DataDirInUse
    from server.storage import lock_data_dir

    data_path = settings.storage.data_path
    if not data_path.is_dir():
        return None
    try:
        os.close(lock_data_dir(data_path))
    except DataDirInUse as error:
        return error.message
    return None


def serve(settings: Settings, engine: Engine | None = None, *, check_weights: bool | None = None) -> int:
    """Run until SIGTERM; 2 for a refused start. ``check_weights`` (default: only for the real
    engine) runs ``server.weights_gate`` before the engine loads."""
    prepare_process(cpu_threads=settings.engine.cpu_threads)
    problem = data_dir_problem(settings)
    if problem is not None:
        print(f"lift3d: {problem}", file=sys.stderr)
        return 2
    from server.app import create_app
    from server.weights_gate import weights_step

    from lift3d.errors import EncryptionKeyMissing

    try:
        # Missing weights never stop the process (a pod would restart-loop): they are pulled
        # (--pull-missing) or reported by /readyz as weights_missing.
        prepare = weights_step(settings) if (engine is None if check_weights is None else check_weights) else None
        app = create_app(settings, engine, prepare=prepare)
    except EncryptionKeyMissing as error:  # a configuration problem, like the checks above
        print(f"lift3d: {error.message}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - one line for the operator, not a traceback
        log.error("cannot start: %s", error)
        return 1
    from server.limits import header_timeout_protocol

    manager = app.state.services.manager
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=CONNECTION_CLOSE_SECONDS,
        lifespan="on",
        # Connection limits (server/limits.py): h11 with a header deadline, a connection cap, short keep-alive.
        http=header_timeout_protocol(settings.server.header_timeout_seconds),
        limit_concurrency=settings.server.max_connections,
        timeout_keep_alive=settings.server.keep_alive_seconds,
    )
    server = DrainingServer(config, lambda: manager.drain(settings.server.shutdown_grace_seconds))
    log.info(
        "lift3d serving on %s:%d (weights %s, device %s)",
        settings.server.host,
        settings.server.port,
        settings.engine.weights,
        settings.engine.device,
    )
    server.run()
    return 0 if server.started else 1
