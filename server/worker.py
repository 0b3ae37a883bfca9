"""The bounded job queue and the one GPU worker thread that drains it.

The event loop only enqueues and reads state; all engine work (load, warm-up,
jobs) happens on the worker thread and, with ``engine.overlap``, the device lane
it starts (pipeline/lanes.py), so HTTP never blocks on the GPU. Uploads live only
in ``LiveJob.image`` and are dropped on every ending path.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import msgspec

from lift3d.errors import (
    DeadlineExceeded,
    EngineUnavailable,
    JobCancelled,
    Lift3dError,
    QueueFull,
    ShuttingDown,
    StageHung,
    Unavailable,
    WorkerStopped,
)
from lift3d.settings import Settings
from pipeline.engine import Engine, EngineJob
from pipeline.lanes import LaneJob, Lanes
from pipeline.events import CancelToken, ProgressEvent
from pipeline.options import JobOptions
from pipeline.state import VIEWS_PREVIEW, JobResult
from server.faults import free_gpu_cache, job_failure
from server.jobstore import JobRecord
from server.metrics import Metrics
from server.schemas import MODEL_FILE, VIEWS_FILE
from server.storage import NewJob, Storage

log = logging.getLogger("lift3d.worker")

SHUTTING_DOWN = ShuttingDown.code
# Before any job has been measured, Retry-After falls back to the warm-up time, else this.
DEFAULT_SERVICE_SECONDS = 30.0
SERVICE_TIME_SMOOTHING = 0.3


def _free_after_oom(run: EngineJob, error: BaseException) -> None:
    """On the device lane, right after a CUDA out-of-memory: drop the failed job's tensors (its
    traceback's frames and its intermediates) and empty the cache, before the next job's device part."""
    typed = job_failure(error)
    if typed is None or typed.code != "gpu_out_of_memory":
        return
    error.__traceback__ = None
    run.close()
    free_gpu_cache()


@dataclass(eq=False)
class LiveJob:
    """A queued or running job's in-memory half: the upload, its cancel token, live progress."""

    id: str
    image: bytes | None
    options: JobOptions
    deadline: float  # time.monotonic() seconds
    cancel: CancelToken
    enqueued_at: float = field(default_factory=time.monotonic)
    run_started: float | None = None
    status: str = "queued"
    stage: str | None = None
    progress: float = 0.0
    _watchers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=set)

    def watch(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Event]:
        """An asyncio.Event set whenever this job changes (call from the event loop)."""
        watcher = (asyncio.get_running_loop(), asyncio.Event())
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        self._watchers.discard(watcher)

    def notify(self) -> None:
        for loop, event in list(self._watchers):
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop closed under a departed subscriber
                self._watchers.discard((loop, event))


def result_summary(result: JobResult) -> dict[str, Any]:
    """Result metadata for the job record: the finishing stage's QA numbers, never bytes."""
    summary: dict[str, Any] = {
        key: value
        for key, value in result.qa.items()
        if isinstance(value, (int, float, str, bool, list, dict)) and key != "bytes"
    }
    summary.update(bytes=len(result.glb), weights_mode=result.weights_mode)
    # The licence report: which pipeline ran and the licence of every artifact it used.
    summary.update(pipeline=result.metadata.get("pipeline"), artifacts=result.metadata.get("artifacts", []))
    summary.setdefault("texture_size", result.options.texture_size)
    return summary


class JobManager:
    """Owns the queue, the worker thread and the live (in-memory) half of every active job.

    Records and results go through :class:`Storage`.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        storage: Storage,
        *,
        prepare: Callable[[Callable[[str], None]], None] | None = None,
    ) -> None:
        self.settings = settings
        # Runs on the worker thread before the engine loads (server/weights_gate.py); it may
        # set the phase /readyz reports while it runs, and its typed error is the load error.
        self.prepare = prepare
        self.phase = "warming_up"
        self.engine = engine
        self.storage = storage
        self.metrics = Metrics(storage.store.count_by_status, lambda: len(self._queue))
        self._queue: collections.deque[LiveJob] = collections.deque()
        self._live: dict[str, LiveJob] = {}
        # Jobs taken from the queue and not yet ended: one per lane and hand-off slot at most.
        self._active: dict[str, LiveJob] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.draining = False
        self.warmed = threading.Event()
        self.load_error: Lift3dError | None = None
        self._service_seconds: float | None = None
        self._warmup_seconds: float | None = None
        # Why the worker thread ended, if it ever does outside a drain (a bug: readiness says so).
        self.stopped_reason: str | None = None
        # The running job the watchdog failed because its stage never returned.
        self._hung: LiveJob | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="lift3d-gpu-worker", daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why /readyz says 503 (a code), or None when the server can take and run jobs."""
        if self.draining:
            return "draining"
        refused = self._refusal()
        if refused is not None:
            return refused.code
        if not self.warmed.is_set():
            return self.phase  # warming_up, or pulling_weights (server/weights_gate.py)
        if self.storage.fault is not None:
            return self.storage.fault.code
        return None

    def _refusal(self) -> Lift3dError | None:
        """A state in which a new job would never run: submissions get this error (503)."""
        if self.load_error is not None:
            return self.load_error
        thread = self._thread
        if self.stopped_reason is not None or (thread is not None and not thread.is_alive() and not self._stopping):
            return WorkerStopped(f"the worker stopped ({self.stopped_reason or 'unknown'}); restart the server")
        hung = self._hung
        if hung is not None:
            return StageHung(f"a stage ({hung.stage or 'unknown'}) is stuck past its job's deadline; retry later")
        return None

    def tick(self) -> None:
        """Once a second, off the event loop: the queue reaper, the stage watchdog, storage recovery."""
        if self._queue:
            self.expire_queued()
        self._watch_running()
        self.storage.recover_faults()

    def drain(self, grace_seconds: float) -> None:
        """Stop taking jobs: queued ones fail ``shutting_down``; the running one gets ``grace_seconds``.

        Blocking (call it off the event loop). Idempotent.
        """
        with self._cond:
            self.draining = True
            waiting = list(self._queue)
            self._queue.clear()
        for job in waiting:
            self._end_unstarted(job, SHUTTING_DOWN, "the server shut down before the job started")
        if self._active:
            log.info("draining: waiting up to %.0fs for jobs %s", grace_seconds, sorted(self._active))
        deadline = time.monotonic() + grace_seconds
        while self._active and time.monotonic() < deadline:
            time.sleep(0.05)
        for running in list(self._active.values()):
            running.cancel.cancel(SHUTTING_DOWN)
            log.warning("draining: grace period over, cancelling job %s", running.id)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            # A cancelled job stops at its next step; a stage that never checks is left behind.
            self._thread.join(timeout=10.0)

    # -- the edge's side -------------------------------------------------------

    def submit(self, image: bytes, engine_options: JobOptions, new_job: NewJob) -> tuple[JobRecord, bool]:
        """Store and enqueue a job; returns ``(record, created)``.

        An Idempotency-Key replay returns the existing job even when the queue is full.
        Raises ShuttingDown, QueueFull or the engine's load error.
        """
        replay = self.storage.find_replay(new_job)
        if replay is not None:
            return replay, False
        with self._cond:
            if self.draining:
                self.metrics.jobs_rejected.labels(SHUTTING_DOWN).inc()
                raise ShuttingDown("the server is shutting down")
            refused = self._refusal()
            if refused is not None:
                self.metrics.jobs_rejected.labels(refused.code).inc()
                raise refused
            if len(self._queue) >= self.settings.server.queue_size:
                self.metrics.jobs_rejected.labels(QueueFull.code).inc()
                raise QueueFull(
                    f"the queue is full ({self.settings.server.queue_size} jobs waiting); retry later",
                    retry_after_seconds=self.retry_after_seconds(),
                )
            try:
                record, created = self.storage.new_job(new_job)
            except Unavailable as error:  # storage_full (507) and the other storage faults
                self.metrics.jobs_rejected.labels(error.code).inc()
                raise
            if created:
                deadline = time.monotonic() + self.settings.server.job_deadline_seconds
                job = LiveJob(
                    id=record.id, image=image, options=engine_options, deadline=deadline, cancel=CancelToken(deadline)
                )
                self._queue.append(job)
                self._live[job.id] = job
                self._cond.notify_all()
                depth = len(self._queue)
        if created:
            log.info("job %s queued (%d bytes, queue depth %d)", record.id, len(image), depth)
        return record, created

    def live(self, job_id: str) -> LiveJob | None:
        return self._live.get(job_id)

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to run, 0 while running, None once it is not in the queue."""
        with self._cond:
            if job_id in self._active:
                return 0
            for index, job in enumerate(self._queue):
                if job.id == job_id:
                    return index + 1
        return None

    def queue_depth(self) -> int:
        return len(self._queue)

    def expire_queued(self) -> int:
        """Fail queued jobs past their deadline now, not when the worker reaches them (frees queue slots)."""
        now = time.monotonic()
        with self._cond:
            late = [job for job in self._queue if now > job.deadline]
            for job in late:
                self._queue.remove(job)
        for job in late:
            self._end_unstarted(job, DeadlineExceeded.code, "the job waited in the queue past its deadline")
        if late:
            self._queue_moved()
        return len(late)

    def retry_after_seconds(self) -> int:
        """When a queue slot should free: what is left of the running job, from measured service time."""
        service = self._service_seconds or self._warmup_seconds or DEFAULT_SERVICE_SECONDS
        started = [job.run_started for job in list(self._active.values()) if job.run_started is not None]
        remaining = service
        if started:
            remaining = service - (time.monotonic() - min(started))
        return int(min(3600, max(1, math.ceil(remaining))))

    def forget(self, records: list[JobRecord]) -> None:
        """Erased jobs that were queued or running: cancel them and drop their uploads."""
        for record in records:
            self._forget_live(record.id)

    def _forget_live(self, job_id: str) -> None:
        with self._cond:
            job = self._live.get(job_id)
            if job is None:
                return
            was_queued = job in self._queue
            if was_queued:
                self._queue.remove(job)
                self._live.pop(job_id, None)
        job.image = None
        job.cancel.cancel("the job was deleted")
        job.status = "cancelled"
        job.notify()
        if was_queued:
            self._queue_moved()

    def _queue_moved(self) -> None:
        """Wake the streams of every waiting job: their queue positions changed (SSE `queue` events)."""
        with self._cond:
            waiting = list(self._queue)
        for job in waiting:
            job.notify()

    # -- the worker thread -----------------------------------------------------

    def _work(self) -> None:
        try:
            self._load_engine()
            lanes = Lanes(
                self._cond, self._take, self._lane_job, lambda: self._stopping, overlap=self.settings.engine.overlap
            )
            lanes.run()
        except BaseException as error:  # noqa: BLE001 - recorded for /readyz, then the thread ends
            # Only a BaseException (SystemExit, KeyboardInterrupt) or a bug in the loop gets here.
            self.stopped_reason = type(error).__name__
            log.critical("the worker thread stopped (%s); /readyz now answers 503", self.stopped_reason, exc_info=True)
            for job in list(self._active.values()):
                if job.status in ("queued", "running"):
                    self._record_end(job, "failed", WorkerStopped.code, "the worker stopped while running this job")
                    job.status = "failed"
                    job.notify()
            with self._cond:  # nobody will run these: fail them now rather than leave them queued forever
                waiting = list(self._queue)
                self._queue.clear()
            for queued in waiting:
                self._end_unstarted(queued, WorkerStopped.code, "the worker stopped before the job started")
            raise

    def _take(self) -> LiveJob | None:
        """The next queued job, now active (the lanes call this with ``_cond`` held)."""
        if not self._queue:
            return None
        job = self._queue.popleft()
        self._active[job.id] = job
        job.run_started = time.monotonic()
        self._queue_moved()  # the jobs behind it moved up (``_cond`` is re-entrant)
        return job

    def _release(self, job: LiveJob) -> None:
        job.image = None
        with self._cond:
            self._active.pop(job.id, None)
            if self._hung is job:
                self._hung = None
                log.warning("the hung stage of job %s returned; the worker runs again", job.id)
            self._live.pop(job.id, None)

    def _guarded(self, job: LiveJob, step: Callable[[], Any]) -> Any:
        """Run ``step`` of one job; whatever escapes (the store failing to record its ending included) fails only it."""
        try:
            return step()
        except Exception as error:  # noqa: BLE001 - one failed job, never a dead worker
            typed = job_failure(error) or (error if isinstance(error, Lift3dError) else None)
            code = typed.code if typed is not None else "internal_error"
            log.error("job %s could not be ended cleanly (%s, %s)", job.id, code, type(error).__name__, exc_info=typed is None)
            # An ending a store fault kept already says why; otherwise record this one, best effort.
            kept = self.storage.ending_kept(job.id)
            if kept or self._record_end(job, "failed", code, typed.message if typed is not None else "internal error"):
                job.status = "failed"
            elif job.status in ("queued", "running"):
                job.status = "failed"  # not recordable at all: the record says so after a restart
            job.notify()
            return None

    def _record_end(self, job: LiveJob, status: str, code: str, message: str, **fields: Any) -> JobRecord | None:
        """``Storage.end_job`` that never raises: a store fault keeps the ending for a later retry."""
        try:
            return self.storage.end_job(job.id, status, code, message, **fields)  # type: ignore[arg-type]
        except Exception as error:  # noqa: BLE001 - Storage kept a storage fault's ending; a bug is logged
            log.error("job %s: its ending (%s) could not be stored (%s)", job.id, code, type(error).__name__)
            return None

    def _watch_running(self) -> None:
        """Fail a running job whose stage is still busy ``watchdog_grace_seconds`` past the deadline.

        Python cannot stop a thread, and a second worker would share the models and the
        GPU with the stuck one, so none is started: the job ends ``deadline_exceeded``
        now, readiness and submissions say ``stage_hung``, and the worker carries on
        with the queue if the stage ever returns (a restart frees it otherwise).
        """
        grace = self.settings.server.watchdog_grace_seconds
        with self._cond:  # the lanes clear _active and _hung under this lock too
            now = time.monotonic()
            late = [
                job for job in self._active.values()
                if job.status == "running" and job.run_started is not None and now > job.deadline + grace
            ]
            if self._hung is not None or not late:
                return
            job = self._hung = late[0]
        log.error("watchdog: job %s is stuck in stage %s past its deadline", job.id, job.stage)
        job.cancel.cancel(DeadlineExceeded.code)  # a stage that checks again stops there
        message = f"the job's {job.stage or 'current'} stage ran past the deadline and did not stop"
        record = self._record_end(job, "failed", DeadlineExceeded.code, message, stage=job.stage)
        if record is not None or self.storage.ending_kept(job.id):
            job.status = "failed"
            job.notify()
        if record is not None:
            self.metrics.jobs_finished.labels("failed").inc()
            self.storage.notify(job.id)

    def _load_engine(self) -> None:
        try:
            if self.prepare is not None:
                self.prepare(self._set_phase)
                self.phase = "warming_up"
            started = time.monotonic()
            self.engine.load()
            self.engine.warmup()
            self._warmup_seconds = time.monotonic() - started
            self.warmed.set()
            log.info("engine ready (load + warm-up %.1fs)", self._warmup_seconds)
        except Lift3dError as error:
            self.load_error = error
            log.error("engine failed to load: %s", error.code)
        except Exception as error:  # noqa: BLE001 - reported through /readyz and the failed jobs
            self.load_error = EngineUnavailable(f"the engine failed to load ({type(error).__name__})")
            log.exception("engine failed to load")

    def _set_phase(self, phase: str) -> None:
        self.phase = phase

    def _lane_job(self, job: LiveJob) -> LaneJob | None:
        """On the host lane: refuse a job that must not run, else its engine parts and its ending."""
        try:
            return self._guarded(job, lambda: self._begin(job))
        finally:
            if job.id in self._active and job.status != "running":
                self._release(job)  # refused, erased or failed before a part ran

    def _begin(self, job: LiveJob) -> LaneJob | None:
        if self.load_error is not None:
            self._end_unstarted(job, self.load_error.code, self.load_error.message)
            return None
        if time.monotonic() > job.deadline:
            # Never touches the GPU: the job waited past its deadline.
            self._end_unstarted(job, DeadlineExceeded.code, "the job waited in the queue past its deadline")
            return None
        if self.storage.start_job(job.id) is None:  # erased while it waited
            return None
        self.metrics.queue_wait_seconds.observe(time.monotonic() - job.enqueued_at)
        job.status = "running"
        job.notify()
        started = time.monotonic()
        image, job.image = job.image, None
        try:
            run = self.engine.begin(image, job.options, progress=self._progress_handler(job), cancel=job.cancel)
        except Exception as error:  # noqa: BLE001 - recorded as the job's failure, like a stage's
            self._job_done(job, None, started, error)
            return None
        del image
        return LaneJob(
            run.lane_parts(),
            lambda error: self._job_done(job, run, started, error),
            name=job.id,
            on_device_error=lambda error: _free_after_oom(run, error),
        )

    def _job_done(self, job: LiveJob, run: EngineJob | None, started: float, error: BaseException | None) -> None:
        """The job's ending on the host lane: publish or record the failure, then drop everything."""
        ended = False
        try:
            self._guarded(job, lambda: self._run(job, run, started, error))
            ended = True
        finally:
            if run is not None:
                run.close()
            # A BaseException leaves the job active: the dying worker records it worker_stopped.
            if ended:
                self._release(job)

    def _run(self, job: LiveJob, run: EngineJob | None, started: float, failure: BaseException | None) -> None:
        """The job's last host part: publish its result, or record how it failed (``failure``)."""
        outcome: tuple[str, str, str] | None = None
        record: JobRecord | None = None
        try:
            if failure is not None:
                raise failure
            assert run is not None
            result = run.result()
            run.close()
            record = self._publish(job, result)
            for stage, seconds in result.timings.items():
                self.metrics.stage_seconds.labels(stage).observe(seconds)
        except JobCancelled:
            if job.cancel.reason == SHUTTING_DOWN:
                outcome = ("failed", SHUTTING_DOWN, "the server shut down before the job finished")
            else:
                outcome = ("cancelled", JobCancelled.code, "the job was cancelled")
        except Lift3dError as error:  # typed failures, deadline_exceeded included
            outcome = ("failed", error.code, error.message)
        except Exception as error:  # noqa: BLE001 - a failed job, never a dead worker
            typed = job_failure(error)  # CUDA out of memory, a full disk, no file descriptors left
            if typed is None:
                log.exception("job %s failed unexpectedly (%s)", job.id, type(error).__name__)
                outcome = ("failed", "internal_error", "internal error")
            else:
                log.error("job %s failed: %s", job.id, typed.code)
                outcome = ("failed", typed.code, typed.message)
        if outcome is not None and outcome[1] == "gpu_out_of_memory":
            if failure is not None:
                failure.__traceback__ = None  # its frames held the tensors
            if run is not None:
                run.close()  # the job's intermediates too, before the cache is emptied
            free_gpu_cache()  # after the except block: the traceback that held the tensors is gone
        elapsed = time.monotonic() - started
        self.metrics.job_seconds.observe(elapsed)
        if outcome is None:
            self._service_seconds = (
                elapsed
                if self._service_seconds is None
                else (1 - SERVICE_TIME_SMOOTHING) * self._service_seconds + SERVICE_TIME_SMOOTHING * elapsed
            )
            self._ended(job, "succeeded", record)
            log.info("job %s succeeded in %.2fs", job.id, elapsed)
        else:
            status, code, message = outcome
            if self._hung is job:
                return  # the watchdog ended it already
            record = self.storage.end_job(job.id, status, code, message, stage=job.stage)  # type: ignore[arg-type]
            self._ended(job, status, record)
            log.info("job %s %s in %.2fs (%s)", job.id, status, elapsed, code)

    def _publish(self, job: LiveJob, result: JobResult) -> JobRecord | None:
        """Store the results (encrypted) and mark the job succeeded; None if erased meanwhile."""
        artifacts = {MODEL_FILE: result.glb}
        views = result.previews.get(VIEWS_PREVIEW) if result.options.return_views else None
        if views is not None:
            artifacts[VIEWS_FILE] = views
        return self.storage.publish(
            job.id,
            artifacts,
            timings={k: round(v, 4) for k, v in result.timings.items()},
            seed=result.seed,
            options=msgspec.to_builtins(result.options),
            result=result_summary(result),
            weights_mode=result.weights_mode,
            stage=job.stage,
            progress=1.0,
        )

    def _progress_handler(self, job: LiveJob) -> Callable[[ProgressEvent], None]:
        def on_progress(event: ProgressEvent) -> None:
            stage_changed = event.stage != job.stage
            job.stage, job.progress = event.stage, event.fraction
            if stage_changed:
                try:
                    self.storage.set_stage(job.id, event.stage)
                except Unavailable:
                    pass  # the stage name is not worth a job: Storage remembered the fault for readiness
            job.notify()

        return on_progress

    def _end_unstarted(self, job: LiveJob, code: str, message: str) -> None:
        job.image = None
        with self._cond:
            self._live.pop(job.id, None)
        record = self._record_end(job, "failed", code, message)
        if record is None and self.storage.ending_kept(job.id):
            job.status = "failed"
            job.notify()
            return
        self._ended(job, "failed", record)
        log.info("job %s failed before it started (%s)", job.id, code)

    def _ended(self, job: LiveJob, status: str, record: JobRecord | None) -> None:
        job.status = status if record is not None else "cancelled"
        job.notify()
        if record is not None:
            self.metrics.jobs_finished.labels(status).inc()
            self.storage.notify(job.id)
