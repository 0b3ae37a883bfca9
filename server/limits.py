"""Connection and upload limits: no client holds a connection, or upload memory, for free.

- Header timeout: a connection must deliver a request's complete headers within
  ``header_timeout_seconds`` of its first byte (or of connecting), else it is closed.
  Silent and slowloris connections go away; uvicorn's own ``timeout_keep_alive``
  only covers the idle time between requests.
- Body timeouts: an upload must keep arriving (``body_idle_timeout_seconds`` between
  chunks) and finish within ``body_timeout_seconds``, else 408 ``request_timeout``.
  A Content-Length larger than the body therefore ends at the idle timeout.
- Connections: past ``max_connections`` (uvicorn's ``limit_concurrency`` count) a request
  gets 503 ``too_many_connections``, and the header timeout bounds how long an idle one
  counts.
- Framing: a request h11 cannot parse (a negative, signed, huge or doubled
  Content-Length, a bad request line, ...) gets 400 ``bad_request``. Both answers are
  problem+json like every other, though they are written below the app.
- Upload bytes: every upload reserves its declared length (or the cap) from one
  budget before its body is read; with the budget spent the answer is 429 from the
  headers alone. Memory held by uploads is then at most the budget (uploads being
  read) plus the queue (``queue_size`` accepted images, each under the cap).
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, AsyncIterator, Final

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from lift3d.errors import BadRequest, Lift3dError, RequestTimeout, TooManyConnections, UploadsBusy
from lift3d.settings import Settings
from server.problems import PROBLEM_MEDIA_TYPE, error_problem

UPLOADS_BUSY_RETRY_SECONDS: Final = 2


def _problem(error: Lift3dError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The app's problem+json answer for ``error`` as raw HTTP parts, closing the connection."""
    status, body, extra_headers = error_problem(error)
    data = json.dumps(body).encode()
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(data)).encode()),
        (b"connection", b"close"),
        *((name.lower().encode(), value.encode()) for name, value in extra_headers.items()),
    ]
    return status, headers, data


def header_timeout_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline on each request's headers, and problem+json below the app."""

    class HeaderTimeoutH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # uvicorn's own cap answers text/plain; the same count is checked here instead.
            cap, self.limit_concurrency = self.limit_concurrency, None
            if cap is not None:
                self.app = self._capped(self.app, cap)

        def _capped(self, app: Any, cap: int) -> Any:
            async def capped(scope: Any, receive: Any, send: Any) -> None:
                # uvicorn's test, taken inside the request's task (already in self.tasks, hence ">").
                if len(self.connections) >= cap or len(self.tasks) > cap:
                    status, headers, body = _problem(
                        TooManyConnections(f"the server holds its limit of {cap} connections; retry shortly")
                    )
                    await send({"type": "http.response.start", "status": status, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
                await app(scope, receive, send)

            return capped

        def send_400_response(self, msg: str) -> None:
            status, headers, body = _problem(BadRequest(f"the request cannot be parsed as HTTP/1.1 ({msg.rstrip('.')})"))
            for event in (h11.Response(status_code=status, headers=headers), h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._awaiting_headers():
                # A request has begun (or the next one on a kept-alive connection): its headers are on the clock.
                self._arm_header_timer()
            else:
                self._disarm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def _awaiting_headers(self) -> bool:
            return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self._awaiting_headers() and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11Protocol


async def timed_chunks(chunks: AsyncIterator[bytes], *, idle_s: float, total_s: float) -> AsyncIterator[bytes]:
    """``chunks`` with a gap limit between chunks and a limit on the whole body (RequestTimeout, 408)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + total_s
    iterator = chunks.__aiter__()
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise RequestTimeout(f"the request body did not arrive within {total_s:g} s")
        try:
            chunk = await asyncio.wait_for(iterator.__anext__(), min(idle_s, remaining))
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RequestTimeout("the request body stopped arriving (or is shorter than its Content-Length)") from None
        yield chunk


class UploadBudget:
    """Bytes of request bodies being read at once, across all connections."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.reserved = 0
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> "UploadBudget":
        limit = settings.server.max_upload_bytes_in_flight
        if limit <= 0:
            limit = max(1, settings.server.queue_size) * settings.engine.decode.max_upload_bytes
        return cls(limit)

    def reserve(self, size: int) -> "Reservation":
        """Hold ``size`` bytes until the reservation is released, or UploadsBusy (429) at once."""
        with self._lock:
            # One upload is always let through, so a budget below the cap cannot refuse everything.
            if self.reserved and self.reserved + size > self.limit_bytes:
                raise UploadsBusy(
                    "too many uploads are being received at once; retry shortly",
                    retry_after_seconds=UPLOADS_BUSY_RETRY_SECONDS,
                )
            self.reserved += size
        return Reservation(self, size)

    def _release(self, size: int) -> None:
        with self._lock:
            self.reserved -= size


class Reservation:
    def __init__(self, budget: UploadBudget, size: int) -> None:
        self._budget = budget
        self._size = size

    def release(self) -> None:
        if self._size:
            self._budget._release(self._size)
            self._size = 0

    def __enter__(self) -> "Reservation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
