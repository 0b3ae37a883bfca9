"""The Litestar application: routes, auth, problem+json errors, and the lifespan that runs the worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator, Callable

import anyio
from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State

from lift3d.settings import Settings
from pipeline.engine import Engine
from server.auth import make_auth_guard, resolve_api_keys
from server.demo import DEMO_ROUTES
from server.info import engine_models
from server.links import LinkSigner
from server.openapi import openapi_config
from server.problems import EXCEPTION_HANDLERS
from server.routes import ROUTES, Services
from server.storage import Storage
from server.worker import JobManager

log = logging.getLogger("lift3d.server")


DEADLINE_CHECK_SECONDS = 1.0


async def _tick_forever(manager: JobManager) -> None:
    """The queue reaper, the stage watchdog and storage recovery (``JobManager.tick``), once a second."""
    while True:
        await asyncio.sleep(DEADLINE_CHECK_SECONDS)
        try:
            await anyio.to_thread.run_sync(manager.tick)
        except Exception:  # noqa: BLE001 - one bad tick must not end the ticking
            log.exception("periodic check failed")


# What a browser on another origin may send and read: the key and the idempotency header in,
# and the headers a web app acts on out (Location of a new job, Retry-After of a 429, a
# replay marker, the download's file name). No credentials mode: the key is a header, links sign themselves.
CORS_ALLOW_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"]
CORS_EXPOSE_HEADERS = ["Location", "Retry-After", "Idempotent-Replayed", "Content-Disposition"]


def cors_config(settings: Settings) -> CORSConfig | None:
    if not settings.server.cors_origins:
        return None
    return CORSConfig(
        allow_origins=list(settings.server.cors_origins),
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=CORS_ALLOW_HEADERS,
        expose_headers=CORS_EXPOSE_HEADERS,
        allow_credentials=False,
        max_age=600,
    )


def create_app(
    settings: Settings, engine: Engine | None = None, *, prepare: Callable[[Callable[[str], None]], None] | None = None
) -> Litestar:
    """Build the app; ``engine`` lets tests inject one with fake stages; ``prepare`` runs on the
    worker thread before the engine loads (``server.weights_gate``: pull or refuse missing weights).

    Nothing heavy happens here: the lifespan recovers the job store, starts the
    worker thread (which loads and warms the models while /readyz says 503), and
    drains on shutdown.
    """
    # Pillow logs EXIF tag values at DEBUG: uploaded metadata must not reach logs at any level
    # (also for apps built in-process, without ``serve``).
    logging.getLogger("PIL").setLevel(logging.WARNING)
    keys = resolve_api_keys(settings)
    engine = engine if engine is not None else Engine(settings.engine)
    storage = Storage(settings.storage)
    manager = JobManager(settings, engine, storage, prepare=prepare)
    signer = LinkSigner.from_settings(settings.server)
    svc = Services(
        settings=settings, manager=manager, storage=storage, signer=signer, models=engine_models(settings)
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(storage.recover)
        storage.start()
        manager.start()
        reaper = asyncio.get_running_loop().create_task(_tick_forever(manager), name="watchdog")
        try:
            yield
        finally:
            reaper.cancel()
            # serve() usually drained already on SIGTERM; draining again is a no-op.
            await anyio.to_thread.run_sync(manager.drain, settings.server.shutdown_grace_seconds)
            await storage.aclose()

    cors = cors_config(settings)
    openapi = openapi_config(settings)
    return Litestar(
        route_handlers=[*ROUTES, *(DEMO_ROUTES if settings.server.demo else [])],
        guards=[make_auth_guard(keys, signer)],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan],
        state=State({"services": svc}),
        cors_config=cors,
        openapi_config=openapi,
        # Our own logging setup (server.main); Litestar's would add request logging we do not want.
        logging_config=None,
        debug=False,
    )
