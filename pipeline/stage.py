"""The contract every stage implements, and the context it runs in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from pipeline.events import CancelToken, ProgressBus, ProgressEvent
from pipeline.runtime import Runtime
from pipeline.state import JobState


@dataclass
class StageContext:
    """Handed to ``Stage.run``: progress reporting and cancellation for one stage of one job."""

    runtime: Runtime
    stage: str
    bus: ProgressBus
    cancel: CancelToken
    start_fraction: float
    span: float

    def report(self, step: int, total: int, message: str = "", *, check_cancel: bool = True) -> None:
        """Report ``step`` of ``total`` done within this stage (diffusers' step-callback style).

        Then checks the cancel token, so every stage that reports its steps stops
        between them when cancelled (as ComfyUI's progress hook does): a
        ``JobCancelled``/``DeadlineExceeded`` raised here unwinds the stage.
        """
        total = max(total, 1)
        step = min(max(step, 0), total)
        fraction = self.start_fraction + self.span * step / total
        self.bus.emit(ProgressEvent(self.stage, step, total, round(fraction, 6), message))
        if check_cancel:
            self.cancel.raise_if_cancelled()

    def check_cancelled(self) -> None:
        self.cancel.raise_if_cancelled()


@runtime_checkable
class Stage(Protocol):
    name: ClassVar[str]
    # Share of the job's progress bar this stage covers (relative; the engine normalises).
    progress_weight: ClassVar[float]
    # The JobState fields the stage needs set before it runs, and the only ones it may change.
    reads: ClassVar[frozenset[str]]
    writes: ClassVar[frozenset[str]]

    def load(self, runtime: Runtime) -> None:
        """Load models once; they stay resident for every later job. The engine always calls it before ``run``."""

    def run(self, job: JobState, ctx: StageContext) -> None:
        """Do the stage's work on ``job`` in place, reporting progress through ``ctx``."""
