"""The two lanes: per-job order, overlap across jobs, one job per lane, cancel and deadline in
each lane, the upload and intermediates dropped on every path, and the same bytes as a serial run."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

import pytest

from lift3d import errors
from lift3d.settings import EngineSettings
from pipeline.engine import Engine, EngineJob, JobPart
from pipeline.events import CancelToken, ProgressEvent
from pipeline.lanes import DEVICE, HOST, LaneJob, Lanes
from pipeline.options import JobOptions
from pipeline.runtime import Runtime
from pipeline.stage import StageContext
from pipeline.state import JobState
from tests.support.paths import shared_path

# The JobState fields that hold the upload or an intermediate.
DROPPED = ("input_bytes", "image", "cutout", "views", "views_grid", "mesh")


class Timeline:
    """(job, stage, lane, start, end) of every stage run, from any thread."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str, float, float]] = []
        self._lock = threading.Lock()

    def add(self, *span) -> None:
        with self._lock:
            self.spans.append(span)


class FakeStage:
    """Sleeps ``steps`` x ``sleep`` seconds (the GIL released, as a GPU wait), reporting each step."""

    progress_weight = 1.0

    def __init__(self, name: str, lane: str, timeline: Timeline, *, steps: int = 4, sleep: float = 0.01, writes=()) -> None:
        self.name = name
        self.lane = lane
        self.timeline = timeline
        self.steps = steps
        self.sleep = sleep
        self.reads: frozenset[str] = frozenset()
        self.writes = frozenset(writes)
        self.fail_on: set[str] = set()  # job names (seed as text) whose run raises

    def load(self, runtime: Runtime) -> None:
        pass

    def run(self, job: JobState, ctx: StageContext) -> None:
        started = time.perf_counter()
        try:
            for step in range(1, self.steps + 1):
                time.sleep(self.sleep)
                ctx.report(step, self.steps, f"step {step}")
                if str(job.options.seed) in self.fail_on and step == 2:
                    raise errors.EmptyReconstruction("fake failure")
            self.produce(job)
        finally:
            self.timeline.add(str(job.options.seed), self.name, self.lane, started, time.perf_counter())

    def produce(self, job: JobState) -> None:
        if self.name == "prep":
            job.image, job.cutout = object(), object()
        elif self.name == "gpu":
            job.views, job.mesh = object(), object()
        elif self.name == "finish":
            job.glb = f"glb-{job.options.seed}".encode()


def fake_engine(timeline: Timeline, **sleeps: float) -> Engine:
    stages = [
        FakeStage("prep", HOST, timeline, sleep=sleeps.get("prep", 0.01), writes={"image", "cutout"}),
        FakeStage("gpu", DEVICE, timeline, sleep=sleeps.get("gpu", 0.01), writes={"views", "mesh"}),
        FakeStage("finish", HOST, timeline, sleep=sleeps.get("finish", 0.01), writes={"glb"}),
    ]
    return Engine(EngineSettings(device="cpu", weights="tiny"), stages=stages, check_contracts=True)


@dataclass
class Outcome:
    glb: bytes | None = None
    error: BaseException | None = None
    events: list[ProgressEvent] = field(default_factory=list)
    state: JobState | None = None
    lane_of_done: str = ""


def run_jobs(
    engine: Engine,
    jobs: list[tuple[bytes, JobOptions, CancelToken]],
    *,
    overlap: bool = True,
    on_event=None,
) -> list[Outcome]:
    """Drive ``jobs`` through the lanes as the worker does: a queue under one condition."""
    cond = threading.Condition()
    queue = collections.deque(enumerate(jobs))
    outcomes = [Outcome() for _ in jobs]
    ended: list[int] = []

    def take():
        return queue.popleft() if queue else None

    def build(item):
        index, (image, options, cancel) = item
        outcome = outcomes[index]
        host_thread = threading.current_thread()  # build() runs on the host lane

        def on_progress(event: ProgressEvent) -> None:
            outcome.events.append(event)
            if on_event is not None:
                on_event(index, event)

        run = engine.begin(image, options, progress=on_progress, cancel=cancel)
        outcome.state = run.state

        def done(error: BaseException | None) -> None:
            outcome.lane_of_done = "host" if threading.current_thread() is host_thread else "device"
            try:
                if error is None:
                    outcome.glb = run.result().glb
                else:
                    outcome.error = error
            finally:
                run.close()
                with cond:
                    ended.append(index)
                    cond.notify_all()

        return LaneJob(run.lane_parts(), done, name=str(index))

    lanes = Lanes(cond, take, build, lambda: len(ended) == len(jobs), overlap=overlap)
    worker = threading.Thread(target=lanes.run)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the lanes did not stop"
    return outcomes


def jobs_of(count: int, cancel: list[CancelToken] | None = None) -> list[tuple[bytes, JobOptions, CancelToken]]:
    tokens = cancel or [CancelToken() for _ in range(count)]
    return [(b"upload-%d" % index, JobOptions(seed=index), tokens[index]) for index in range(count)]


def assert_dropped(outcome: Outcome) -> None:
    assert outcome.state is not None
    kept = {name: getattr(outcome.state, name) for name in DROPPED if getattr(outcome.state, name) is not None}
    assert kept == {}, f"kept after the job ended: {sorted(kept)}"


def test_the_engine_splits_its_stages_into_host_device_host_parts():
    engine = fake_engine(Timeline())
    engine.load()
    assert engine.parts() == [JobPart(HOST, (0,)), JobPart(DEVICE, (1,)), JobPart(HOST, (2,))]


def test_the_real_stages_put_multiview_and_reconstruct_in_the_device_lane(u2netp_weights_dir):
    engine = Engine(EngineSettings(device="cpu", weights="tiny", weights_dir=str(u2netp_weights_dir)))
    engine.load()
    lanes = {engine.stages[i].name: part.lane for part in engine.parts() for i in part.stages}
    # Background runs on the CPU here (onnxruntime's CPU provider), so it is host work.
    assert lanes == {"decode": HOST, "background": HOST, "multiview": DEVICE, "reconstruct": DEVICE, "finish": HOST}


def test_jobs_overlap_yet_each_runs_in_order_with_one_job_per_lane():
    timeline = Timeline()
    engine = fake_engine(timeline, prep=0.01, gpu=0.03, finish=0.02)
    outcomes = run_jobs(engine, jobs_of(4))

    assert [o.glb for o in outcomes] == [b"glb-%d" % i for i in range(4)]
    assert all(o.error is None for o in outcomes)
    spans = timeline.spans
    for job in map(str, range(4)):
        mine = sorted((s for s in spans if s[0] == job), key=lambda s: s[3])
        assert [s[1] for s in mine] == ["prep", "gpu", "finish"]
        assert all(a[4] <= b[3] for a, b in zip(mine, mine[1:])), "a job's parts overlapped each other"
    for lane in (HOST, DEVICE):
        mine = sorted((s for s in spans if s[2] == lane), key=lambda s: s[3])
        assert all(a[4] <= b[3] for a, b in zip(mine, mine[1:])), f"two jobs ran in the {lane} lane at once"
    # Overlap: job 1's device part ran while job 0 was finishing on the host.
    finish0 = next(s for s in spans if s[:2] == ("0", "finish"))
    gpu1 = next(s for s in spans if s[:2] == ("1", "gpu"))
    assert gpu1[3] < finish0[4] and finish0[3] < gpu1[4]
    # Jobs leave in the order they came.
    assert [s[0] for s in sorted((s for s in spans if s[1] == "finish"), key=lambda s: s[3])] == ["0", "1", "2", "3"]
    for outcome in outcomes:
        fractions = [event.fraction for event in outcome.events]
        assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
        assert_dropped(outcome)


def test_serial_mode_never_overlaps():
    timeline = Timeline()
    engine = fake_engine(timeline)
    outcomes = run_jobs(engine, jobs_of(3), overlap=False)
    assert [o.glb for o in outcomes] == [b"glb-0", b"glb-1", b"glb-2"]
    spans = sorted(timeline.spans, key=lambda s: s[3])
    assert [s[0] for s in spans] == ["0"] * 3 + ["1"] * 3 + ["2"] * 3
    assert all(a[4] <= b[3] for a, b in zip(spans, spans[1:]))


@pytest.mark.parametrize("stage", ["prep", "gpu", "finish"])
def test_a_cancel_in_either_lane_ends_only_that_job(stage):
    timeline = Timeline()
    engine = fake_engine(timeline)
    tokens = [CancelToken() for _ in range(3)]

    def cancel_job_1(index: int, event: ProgressEvent) -> None:
        if index == 1 and event.stage == stage and event.step == 2:
            tokens[1].cancel("user asked")

    outcomes = run_jobs(engine, jobs_of(3, tokens), on_event=cancel_job_1)
    assert isinstance(outcomes[1].error, errors.JobCancelled) and outcomes[1].glb is None
    ran = [s[1] for s in timeline.spans if s[0] == "1"]
    assert ran == ["prep", "gpu", "finish"][: ["prep", "gpu", "finish"].index(stage) + 1]
    assert [o.glb for o in (outcomes[0], outcomes[2])] == [b"glb-0", b"glb-2"]
    for outcome in outcomes:
        assert_dropped(outcome)


def test_a_job_cancelled_while_it_waits_in_a_hand_off_slot_never_runs_its_next_part():
    timeline = Timeline()
    engine = fake_engine(timeline, gpu=0.05)
    tokens = [CancelToken() for _ in range(3)]

    def cancel_job_2_when_prepared(index: int, event: ProgressEvent) -> None:
        # Job 2 is prepared while job 1 holds the device lane: it then waits in the ready slot.
        if index == 2 and event.stage == "prep" and event.message == "done":
            tokens[2].cancel("gone")

    outcomes = run_jobs(engine, jobs_of(3, tokens), on_event=cancel_job_2_when_prepared)
    assert isinstance(outcomes[2].error, errors.JobCancelled)
    assert [s[1] for s in timeline.spans if s[0] == "2"] == ["prep"]
    assert_dropped(outcomes[2])


class SteppedClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("stage", ["prep", "gpu", "finish"])
def test_a_deadline_in_either_lane_fails_the_job_there(stage):
    timeline = Timeline()
    engine = fake_engine(timeline)
    clock = SteppedClock()
    tokens = [CancelToken(), CancelToken(deadline=10.0, clock=clock), CancelToken()]

    def pass_the_deadline(index: int, event: ProgressEvent) -> None:
        if index == 1 and event.stage == stage and event.step == 1 and event.total > 1:
            clock.now = 11.0

    outcomes = run_jobs(engine, jobs_of(3, tokens), on_event=pass_the_deadline)
    assert isinstance(outcomes[1].error, errors.DeadlineExceeded)
    order = ["prep", "gpu", "finish"]
    assert [s[1] for s in timeline.spans if s[0] == "1"] == order[: order.index(stage) + 1]
    assert outcomes[0].glb == b"glb-0" and outcomes[2].glb == b"glb-2"
    assert_dropped(outcomes[1])


@pytest.mark.parametrize("stage", ["prep", "gpu", "finish"])
def test_a_failing_part_drops_the_upload_and_ends_the_job_on_the_host_lane(stage):
    timeline = Timeline()
    engine = fake_engine(timeline)
    next(s for s in engine.stages if s.name == stage).fail_on.add("0")
    outcomes = run_jobs(engine, jobs_of(2))
    assert isinstance(outcomes[0].error, errors.EmptyReconstruction)
    assert outcomes[1].glb == b"glb-1"
    for outcome in outcomes:
        assert_dropped(outcome)
        assert outcome.lane_of_done == "host"


def test_parts_run_once_each_and_in_order():
    engine = fake_engine(Timeline())
    run: EngineJob = engine.begin(b"x", JobOptions(seed=1))
    with pytest.raises(errors.Lift3dError):
        run.run_part(run.parts[1])
    run.close()


@pytest.mark.shared
def test_overlapped_jobs_give_the_same_bytes_as_serial_ones(u2netp_weights_dir):
    engine = Engine(EngineSettings(device="cpu", weights="tiny", weights_dir=str(u2netp_weights_dir)))
    engine.load()
    photo = shared_path("images", "fruit.jpg").read_bytes()
    options = [
        JobOptions(seed=seed, steps=1, target_faces=1000, texture_size=512, remove_background="on") for seed in (3, 4, 5)
    ]
    serial = [engine.run(photo, option).glb for option in options]
    jobs = [(photo, option, CancelToken()) for option in options]
    overlapped = run_jobs(engine, jobs, overlap=True)
    assert [o.error for o in overlapped] == [None, None, None]
    assert [o.glb for o in overlapped] == serial
    assert len(set(serial)) == 3  # the seeds matter, so equality is not trivial
    for outcome in overlapped:
        assert_dropped(outcome)


def test_a_device_error_is_handed_to_its_release_hook_on_the_device_lane() -> None:
    """on_device_error runs right after the failing device part (before the lane moves on),
    never for a host part, and the job still ends with the original error."""
    from pipeline.lanes import DEVICE, HOST, LaneJob

    seen: list[str] = []
    ended: list[BaseException | None] = []
    boom = RuntimeError("device part failed")

    def fail() -> None:
        raise boom

    job = LaneJob(
        [(DEVICE, fail), (HOST, lambda: seen.append("host part"))],
        ended.append,
        on_device_error=lambda error: seen.append(f"released after {error}"),
    )
    job.run_while(DEVICE)
    assert seen == ["released after device part failed"] and job.next_lane is None
    job.end()
    assert ended == [boom]
    host_failure = LaneJob([(HOST, fail)], ended.append, on_device_error=lambda error: seen.append("wrong lane"))
    host_failure.run_while(HOST)
    assert "wrong lane" not in seen
