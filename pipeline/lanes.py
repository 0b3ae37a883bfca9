"""Two lanes, so the device never waits for the CPU work of the jobs around it.

A job runs in up to three parts, in order: a host part (decode; background removal
when it runs on the CPU), a device part (multiview, reconstruct) and a host part
(finishing, then whatever the caller adds: publishing the result). Two threads run
them:

- the **device lane** runs one job's device part at a time;
- the **host lane** (the caller's thread) runs every host part, one at a time.

Between them are two hand-off slots of one job each: *ready* (a prepared job waiting
for the device) and *finished* (a job whose device part ended, or failed, waiting for
the host). So at most four jobs are in flight: one per lane, one per slot. The host
lane fills *ready* first (the device is the costly resource), then drains *finished*;
a job taken from the queue is prepared only when *ready* is empty, so nothing queues
inside the lanes beyond those slots.

Threads, not processes: the finishing colour query needs the job's triplanes, which
live on the device; a second process could not reach them without copying them out
and the model with them. The cost is the GIL: host work that holds it (xatlas
packing, PyMCubes) delays the device lane's next kernel launch, which the stand-in
benchmark (benchmarks/bench_lanes.py) measures rather than assumes away.

With ``overlap`` off every part of a job runs on the host lane and the next job starts
only after the previous one ended: the serial engine, exactly.

A failure in any part skips the job's later parts; ``LaneJob.done`` then runs on the
host lane with the error, exactly once per job, on every path.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Generic, Literal, Sequence, TypeVar

log = logging.getLogger("lift3d.lanes")

Lane = Literal["device", "host"]
DEVICE: Lane = "device"
HOST: Lane = "host"

T = TypeVar("T")


@dataclass
class LaneJob:
    """One job as the lanes see it: its parts in order, and what ends it.

    ``done(error)`` runs on the host lane after the last part succeeded (``error`` is
    None) or right after the first part that raised; it must drop the job's data.
    """

    parts: Sequence[tuple[Lane, Callable[[], None]]]
    done: Callable[[BaseException | None], None]
    name: str = ""
    # Runs on the device lane right after a device part raised, before that lane takes the
    # next job: the place to free what the failed job holds on the GPU (e.g. after an OOM).
    on_device_error: Callable[[BaseException], None] | None = None
    _next: int = field(default=0, repr=False)
    _error: BaseException | None = field(default=None, repr=False)

    def run_while(self, lane: Lane) -> None:
        """Run this job's next parts while they belong to ``lane``; remember the first error."""
        while self._error is None and self._next < len(self.parts) and self.parts[self._next][0] == lane:
            _, part = self.parts[self._next]
            self._next += 1
            try:
                part()
            except BaseException as error:  # noqa: BLE001 - handed to done() on the host lane, never lost
                self._error = error
                if lane == DEVICE and self.on_device_error is not None:
                    try:
                        self.on_device_error(error)
                    except Exception:  # noqa: BLE001 - freeing memory must not lose the job's own error
                        log.exception("freeing job %s after its device error failed", self.name)

    @property
    def next_lane(self) -> Lane | None:
        """The lane of the next part, or None when the job has nothing left to run (or failed)."""
        if self._error is not None or self._next >= len(self.parts):
            return None
        return self.parts[self._next][0]

    def end(self) -> None:
        try:
            self.done(self._error)
        except Exception:  # noqa: BLE001 - the host lane must outlive a broken ending
            log.exception("ending job %s failed", self.name)


class Lanes(Generic[T]):
    """Runs jobs through the device and host lanes (see the module docstring).

    The caller shares its queue's ``condition``: ``take()`` and ``stopping()`` are called
    with it held (``take`` pops the next queued item or returns None, never blocking), and
    whoever adds an item or asks to stop must ``notify_all`` it. ``build(item)`` turns an
    item into a ``LaneJob`` on the host lane without the lock, or returns None when the
    item needs no run (it was refused or ended there).
    """

    def __init__(
        self,
        condition: threading.Condition,
        take: Callable[[], T | None],
        build: Callable[[T], LaneJob | None],
        stopping: Callable[[], bool],
        *,
        overlap: bool = True,
        on_busy: Callable[[Lane, bool], None] | None = None,
    ) -> None:
        self._cond = condition
        self._take = take
        self._build = build
        self._stopping = stopping
        self.overlap = overlap
        # on_busy(lane, busy): called when a lane starts (True) or stops (False) running a part.
        self._on_busy = on_busy or (lambda lane, busy: None)
        self._ready: LaneJob | None = None
        self._finished: LaneJob | None = None
        self._on_device: LaneJob | None = None
        # True while the host lane prepares an item it took: the device lane must not stop then.
        self._preparing = False
        # Set when the host lane leaves (normally or not): the device lane then stops waiting.
        self._closed = False
        self._device_thread: threading.Thread | None = None

    def in_flight(self) -> int:
        """Jobs inside the lanes (taken from the queue, not yet ended), the host lane's own excluded."""
        with self._cond:
            return sum(job is not None for job in (self._ready, self._finished, self._on_device))

    # -- the host lane (the caller's thread) -----------------------------------

    def run(self) -> None:
        """Run jobs until ``stopping()``; the jobs already inside the lanes are ended first."""
        if not self.overlap:
            self._run_serial()
            return
        self._device_thread = threading.Thread(target=self._device_lane, name="lift3d-device-lane", daemon=True)
        self._device_thread.start()
        try:
            self._host_lane()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._device_thread.join(timeout=10.0)

    def _run_serial(self) -> None:
        while True:
            with self._cond:
                item = self._wait_for_item()
            if item is None:
                return
            job = self._build(item)
            if job is None:
                continue
            while job.next_lane is not None:
                lane = job.next_lane
                self._on_busy(lane, True)
                job.run_while(lane)
                self._on_busy(lane, False)
            job.end()

    def _wait_for_item(self) -> T | None:
        while True:
            if self._stopping():
                return None
            item = self._take()
            if item is not None:
                return item
            self._cond.wait()

    def _host_lane(self) -> None:
        while True:
            with self._cond:
                job, item = self._next_host_work()
            if job is None and item is None:
                return
            try:
                if item is not None:
                    job = self._build(item)
                    if job is None:
                        continue
                assert job is not None
                self._on_busy(HOST, True)
                job.run_while(HOST)
                self._on_busy(HOST, False)
                if job.next_lane == DEVICE:
                    with self._cond:
                        # Only the host lane fills the slot, and it took the item while the slot was empty.
                        assert self._ready is None, "a job's parts must alternate host, device, host"
                        self._ready = job
                        job = None
                else:
                    job.end()
            finally:
                with self._cond:
                    self._preparing = False
                    self._cond.notify_all()

    def _next_host_work(self) -> tuple[LaneJob | None, T | None]:
        """Under the lock: a new item when the device needs one, else a finished job; (None, None) to stop."""
        while True:
            if self._ready is None and not self._stopping():
                item = self._take()
                if item is not None:
                    self._preparing = True
                    return None, item
            if self._finished is not None:
                job, self._finished = self._finished, None
                self._cond.notify_all()  # the device lane may be waiting to hand off
                return job, None
            if self._stopping() and self._ready is None and self._on_device is None:
                return None, None
            self._cond.wait()

    # -- the device lane -------------------------------------------------------

    def _device_lane(self) -> None:
        while True:
            with self._cond:
                while self._ready is None:
                    if self._closed or (self._stopping() and not self._preparing):
                        return
                    self._cond.wait()
                job, self._ready = self._ready, None
                self._on_device = job
                self._cond.notify_all()  # the host lane may prepare the next job now
            self._on_busy(DEVICE, True)
            job.run_while(DEVICE)
            self._on_busy(DEVICE, False)
            with self._cond:
                while self._finished is not None and not self._closed:
                    self._cond.wait()
                self._finished = job
                self._on_device = None
                self._cond.notify_all()
