"""Progress events and cancellation, shared by every stage.

Events are neutral: a terminal bar, an SSE stream and a Prometheus exporter are
all just handlers. They never carry image bytes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Callable, Protocol

from lift3d.errors import DeadlineExceeded, JobCancelled


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    stage: str
    step: int
    total: int
    # Fraction of the whole job in [0, 1]; monotone over a job's events.
    fraction: float
    message: str = ""


class ProgressHandler(Protocol):
    def __call__(self, event: ProgressEvent) -> None: ...


class CancelToken:
    """Set from any thread; the engine checks it between stages and diffusion steps."""

    def __init__(self, deadline: float | None = None, clock: Callable[[], float] | None = None) -> None:
        import time

        self._event = threading.Event()
        self._deadline = deadline
        self._clock = clock or time.monotonic
        self.reason = ""

    def cancel(self, reason: str = "cancelled") -> None:
        self.reason = reason
        self._event.set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise JobCancelled(self.reason or "cancelled")
        if self._deadline is not None and self._clock() > self._deadline:
            raise DeadlineExceeded("the job ran past its deadline")


class ProgressBus:
    """Fan-out of events to subscribed handlers; a failing handler never fails the job."""

    def __init__(self, handlers: list[ProgressHandler] | None = None) -> None:
        self._handlers: list[ProgressHandler] = list(handlers or [])
        self._high_water = 0.0

    def subscribe(self, handler: ProgressHandler) -> None:
        self._handlers.append(handler)

    def emit(self, event: ProgressEvent) -> None:
        # A stage that reports a step twice (or restarts a sub-loop) must not move
        # a client's progress bar backwards: fractions are clamped to be monotone.
        if event.fraction < self._high_water:
            event = replace(event, fraction=self._high_water)
        self._high_water = event.fraction
        for handler in self._handlers:
            try:
                handler(event)
            except Exception:  # noqa: BLE001 - observers must not break the job
                import logging

                logging.getLogger("lift3d.progress").exception("progress handler failed")
