"""The engine: ordered progress, cancellation, timings, warmup, and nothing written to disk."""

from __future__ import annotations

from dataclasses import fields
import time
from pathlib import Path

import pytest

from lift3d.settings import EngineSettings
from lift3d import errors
from pipeline.background import BackgroundStage, BorderColourSegmenter
from pipeline.decode import DecodeStage
from pipeline.engine import Engine
from pipeline.events import CancelToken, ProgressEvent
from pipeline.options import JobOptions
from pipeline.runtime import Runtime
from pipeline.stage import Stage, StageContext
from pipeline.state import JobState
from tests.support.paths import shared_path
from tests.support.write_audit import WriteAudit, isolate_temp_and_cwd

FAKE_GLB = b"glTF-fake"


class StepStage:
    """Reports ``steps`` steps; records how far it got and what it saw."""

    progress_weight = 1.0
    reads: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset({"glb", "qa"})

    def __init__(self, name: str, steps: int = 5, sleep: float = 0.0, weight: float = 1.0) -> None:
        self.name = name
        self.steps = steps
        self.sleep = sleep
        self.progress_weight = weight
        self.loads = 0
        self.done_steps = 0
        self.jobs: list[JobState] = []

    def load(self, runtime: Runtime) -> None:
        self.loads += 1

    def run(self, job: JobState, ctx: StageContext) -> None:
        self.jobs.append(job)
        for step in range(1, self.steps + 1):
            if self.sleep:
                time.sleep(self.sleep)
            self.done_steps = step
            ctx.report(step, self.steps, f"step {step}")


class ExportStage(StepStage):
    def run(self, job: JobState, ctx: StageContext) -> None:
        super().run(job, ctx)
        job.glb = FAKE_GLB
        job.qa["faces"] = 12


def engine_with(*stages: Stage, **settings) -> Engine:
    return Engine(EngineSettings(device="cpu", weights="tiny", **settings), stages=list(stages))


def test_fake_stages_satisfy_the_stage_protocol():
    assert isinstance(StepStage("a"), Stage)
    assert isinstance(DecodeStage(), Stage) and isinstance(BackgroundStage(), Stage)


def test_progress_events_arrive_in_stage_order_with_monotone_fractions():
    stages = [StepStage("a", 3), StepStage("b", 7, weight=3.0), ExportStage("c", 2)]
    events: list[ProgressEvent] = []
    result = engine_with(*stages).run(b"unused", JobOptions(seed=1), progress=events.append)

    assert result.glb == FAKE_GLB and result.qa == {"faces": 12}
    order = [event.stage for event in events]
    assert [name for i, name in enumerate(order) if i == 0 or order[i - 1] != name] == ["a", "b", "c"]
    fractions = [event.fraction for event in events]
    assert fractions == sorted(fractions)
    assert fractions[0] == 0.0 and fractions[-1] == pytest.approx(1.0)
    # Weights shape the bar: "b" (weight 3 of 5) spans 0.2 .. 0.8.
    b_fractions = [event.fraction for event in events if event.stage == "b"]
    assert min(b_fractions) == pytest.approx(0.2) and max(b_fractions) == pytest.approx(0.8)
    b_steps = [event.step for event in events if event.stage == "b" and event.total == 7]
    assert b_steps == list(range(1, 8))
    # Events are plain numbers and text: never image bytes.
    for event in events:
        assert all(isinstance(getattr(event, field.name), (str, int, float)) for field in fields(event))


def test_a_stage_reporting_backwards_cannot_move_the_bar_back():
    class Restarting(StepStage):
        def run(self, job: JobState, ctx: StageContext) -> None:
            ctx.report(3, 4)
            ctx.report(1, 4, "retrying")

    events: list[ProgressEvent] = []
    engine_with(Restarting("a"), ExportStage("z", 1)).run(b"", progress=[events.append])
    fractions = [event.fraction for event in events]
    assert fractions == sorted(fractions)


def test_cancellation_stops_between_steps_and_skips_later_stages():
    first, second, last = StepStage("a", 3), StepStage("b", 100), ExportStage("c", 3)
    token = CancelToken()

    def cancel_at_step_10(event: ProgressEvent) -> None:
        if event.stage == "b" and event.step == 10 and event.total == 100:
            token.cancel("user asked")

    with pytest.raises(errors.JobCancelled, match="user asked"):
        engine_with(first, second, last).run(b"upload", JobOptions(seed=1), progress=cancel_at_step_10, cancel=token)
    assert first.done_steps == 3
    assert second.done_steps == 10  # stopped right after the step that saw the cancel
    assert last.done_steps == 0 and not last.jobs
    assert second.jobs[0].input_bytes is None  # dropped on the cancel path too


def test_a_cancel_that_no_step_sees_still_stops_at_the_next_stage():
    token = CancelToken()

    class Silent(StepStage):
        def run(self, job: JobState, ctx: StageContext) -> None:
            token.cancel()  # never reports, never checks

    after = ExportStage("after", 1)
    with pytest.raises(errors.JobCancelled):
        engine_with(Silent("silent"), after).run(b"", cancel=token)
    assert not after.jobs


def test_a_passed_deadline_stops_the_job():
    now = [0.0]
    token = CancelToken(deadline=5.0, clock=lambda: now[0])

    def advance_clock(event: ProgressEvent) -> None:
        if event.stage == "a" and event.step == 2:
            now[0] = 10.0

    stage = StepStage("a", 10)
    with pytest.raises(errors.DeadlineExceeded):
        engine_with(stage, ExportStage("z", 1)).run(b"", progress=advance_clock, cancel=token)
    assert stage.done_steps == 2


def test_per_stage_timings_are_recorded():
    stages = [StepStage("a", 2, sleep=0.03), StepStage("b", 1), ExportStage("c", 1)]
    result = engine_with(*stages).run(b"", JobOptions(seed=3))
    assert list(result.timings) == ["a", "b", "c"]
    assert result.timings["a"] >= 0.06
    assert all(seconds >= 0 for seconds in result.timings.values())
    assert result.weights_mode == "tiny" and result.seed == 3


def test_models_load_once_for_many_jobs():
    stage, export = StepStage("a", 1), ExportStage("z", 1)
    engine = engine_with(stage, export)
    for _ in range(3):
        engine.run(b"")
    assert stage.loads == 1 and export.loads == 1
    assert set(engine.load_seconds) == {"a", "z"}


def test_warmup_runs_the_real_front_stages(tmp_path):
    """warmup() drives decode + background (heuristic mask: no weights in tiny mode) and the rest."""
    export = ExportStage("export", 1)
    engine = Engine(
        EngineSettings(device="cpu", weights="tiny", weights_dir=str(tmp_path)),
        stages=[DecodeStage(), BackgroundStage(segmenter=BorderColourSegmenter()), export],
    )
    result = engine.warmup()
    assert engine.loaded
    assert result.glb == FAKE_GLB
    assert result.options.steps <= 2 and result.options.remove_background == "on"
    assert result.metadata["background"]["mask"] == "border-colour-heuristic"
    assert set(result.timings) == {"decode", "background", "export"}
    job = export.jobs[0]
    assert job.image is None and job.cutout is None  # dropped after the job


# ---------------------------------------------------------------- nothing on disk


def snapshot(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


@pytest.mark.shared
def test_decode_and_background_write_nothing_to_disk(u2netp_weights_dir, tmp_path, monkeypatch):
    photo = shared_path("images", "bird.jpg").read_bytes()
    export = ExportStage("export", 1)
    engine = Engine(
        EngineSettings(device="cpu", weights="locked", weights_dir=str(u2netp_weights_dir)),
        stages=[DecodeStage(), BackgroundStage(), export],
    )
    engine.load()

    temp_dir, work_dir = isolate_temp_and_cwd(tmp_path, monkeypatch)

    WriteAudit.start()  # the audit sees writes at all (else the check below would be vacuous)
    (tmp_path / "probe").write_bytes(b"x")
    assert WriteAudit.stop() == [str(tmp_path / "probe")]

    WriteAudit.start()
    try:
        result = engine.run(photo, JobOptions(seed=0, remove_background="on", return_views=True))
    finally:
        written = WriteAudit.stop()

    assert result.metadata["background"]["mask"] == "u2netp"
    assert result.previews["cutout"].startswith(b"\x89PNG")  # the cut-out lives in memory only
    assert written == []
    assert snapshot(temp_dir) == set() and snapshot(work_dir) == set()


class RogueStage(StepStage):
    """Declares it writes the GLB only, but also touches the cut-out."""

    reads = frozenset({"input_bytes"})
    writes = frozenset({"glb"})

    def run(self, job: JobState, ctx: StageContext) -> None:
        job.cutout = "sneaked in"
        job.glb = FAKE_GLB


class NeedsViewsStage(ExportStage):
    reads = frozenset({"views"})
    writes = frozenset({"glb", "qa"})


def test_the_engine_enforces_each_stages_declared_writes():
    engine = Engine(EngineSettings(device="cpu"), [RogueStage("rogue")], check_contracts=True)
    with pytest.raises(errors.Lift3dError, match=r"rogue wrote \['cutout'\]"):
        engine.run(b"bytes")
    # Without the check (production), the same stage runs: the check is what catches it.
    assert Engine(EngineSettings(device="cpu"), [RogueStage("rogue")]).run(b"bytes").glb == FAKE_GLB


def test_the_engine_enforces_each_stages_declared_reads():
    engine = Engine(EngineSettings(device="cpu"), [NeedsViewsStage("late")], check_contracts=True)
    with pytest.raises(errors.Lift3dError, match=r"late needs \['views'\]"):
        engine.run(b"bytes")


def test_the_real_stages_declare_a_chain_that_closes():
    """Each stage reads only what an earlier stage (or the submission) wrote, and the last writes the GLB."""
    from pipeline.engine import default_stages

    available = {"options", "input_bytes"}
    for stage in default_stages(EngineSettings()):
        assert stage.reads <= available, (stage.name, stage.reads - available)
        available |= stage.writes
    assert "glb" in available
