"""The engine: runs the ordered stages of one job, in process, with models resident.

The HTTP server, the CLI and the benchmarks all drive this one class.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from lift3d.settings import EngineSettings
from lift3d.errors import Lift3dError, PipelineNotLoaded
from pipeline.events import CancelToken, ProgressBus, ProgressEvent, ProgressHandler
from pipeline.lanes import DEVICE, HOST, Lane
from pipeline.options import JobOptions, default_pipeline, resolve_options
from pipeline.precision import apply_tf32
from pipeline.runtime import Runtime
from pipeline.stage import Stage, StageContext
from pipeline.state import JobResult, JobState

log = logging.getLogger("lift3d.engine")

WARMUP_STEPS = 2


def default_stages(settings: EngineSettings) -> list[Stage]:
    """decode -> background -> multiview -> reconstruct -> finish."""
    from pipeline.background import BackgroundStage
    from pipeline.decode import DecodeStage
    from pipeline.finish import FinishStage
    from pipeline.multiview import MultiviewStage
    from pipeline.reconstruct import ReconstructStage

    return [DecodeStage(), BackgroundStage(), MultiviewStage(), ReconstructStage(), FinishStage()]


def pipeline_stages(settings: EngineSettings) -> dict[str, list[Stage]]:
    """The stage list of each pipeline the profile loads; stages without a model of their own are shared.

    multiview: decode -> background -> multiview -> reconstruct -> finish
    fast:      decode -> background (512 px cut-out) -> reconstruct (TripoSR) -> finish
    """
    from pipeline.background import BackgroundStage
    from pipeline.decode import DecodeStage
    from pipeline.finish import FinishStage

    decode, background, finish = DecodeStage(), BackgroundStage(), FinishStage()
    pipelines: dict[str, list[Stage]] = {}
    for name in settings.pipelines:
        if name == "multiview":
            from pipeline.multiview import MultiviewStage
            from pipeline.reconstruct import ReconstructStage

            pipelines[name] = [decode, background, MultiviewStage(), ReconstructStage(), finish]
        elif name == "fast":
            from pipeline.single_view import SingleViewReconstructStage

            pipelines[name] = [decode, background.resized(settings.fast.cutout_size), SingleViewReconstructStage(), finish]
    return pipelines


def licence_reports(settings: EngineSettings, pipelines: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Each pipeline's artifacts and licences (weights.lock); empty where the lock cannot be read."""
    from lift3d.weights.catalog import LockError, licence_report

    reports: dict[str, list[dict[str, Any]]] = {}
    for name in pipelines:
        try:
            reports[name] = licence_report(name, settings)
        except (LockError, OSError, KeyError) as error:
            log.warning("no licence report for pipeline %s (%s)", name, type(error).__name__)
            reports[name] = []
    return reports


def warmup_image_png(size: int = 256) -> bytes:
    """A synthetic object (a shaded disc on white) used to warm every stage."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    margin = size // 5
    draw.ellipse((margin, margin, size - margin, size - margin), fill=(200, 80, 40))
    draw.rectangle((size // 2 - 8, margin, size // 2 + 8, size - margin), fill=(40, 90, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class StageContractError(Lift3dError):
    """A stage read a field no earlier stage set, or changed one it does not declare (a bug)."""

    code = "stage_contract_violated"


def _spans(stages: list[Stage]) -> list[float]:
    """Each stage's share of the job's progress bar."""
    total_weight = sum(stage.progress_weight for stage in stages) or 1.0
    return [stage.progress_weight / total_weight for stage in stages]


_STATE_FIELDS = tuple(f.name for f in dataclasses.fields(JobState))


def _snapshot(job: JobState) -> dict[str, Any]:
    # Dicts are copied so that an in-place update counts as a write; other fields by identity.
    return {name: (dict(value) if isinstance(value, dict) else value) for name in _STATE_FIELDS for value in [getattr(job, name)]}


def check_stage_contract(stage: Stage, before: dict[str, Any], job: JobState) -> None:
    """Raise when ``stage`` changed a field of ``job`` outside ``stage.writes``."""
    after = _snapshot(job)
    changed = {
        name for name in _STATE_FIELDS if (after[name] != before[name] if isinstance(after[name], dict) else after[name] is not before[name])
    }
    undeclared = changed - stage.writes
    if undeclared:
        raise StageContractError(f"stage {stage.name} wrote {sorted(undeclared)} outside its declared writes")


def check_stage_inputs(stage: Stage, job: JobState) -> None:
    missing = sorted(name for name in stage.reads if getattr(job, name) is None)
    if missing:
        raise StageContractError(f"stage {stage.name} needs {missing}, which no earlier stage set")


class Engine:
    """Runs the ordered stages of one job.

    ``check_contracts`` makes the engine assert each stage's declared reads and
    writes on the job state (the tests turn it on; it costs a dict copy per stage).
    """

    def __init__(
        self,
        settings: EngineSettings,
        stages: Iterable[Stage] | None = None,
        *,
        pipelines: Mapping[str, Iterable[Stage]] | None = None,
        check_contracts: bool = False,
    ) -> None:
        self.settings = settings
        self.check_contracts = check_contracts
        self.runtime = Runtime.from_settings(settings)
        if pipelines is not None:
            self.pipelines = {name: list(chain) for name, chain in pipelines.items()}
        elif stages is not None:
            self.pipelines = {default_pipeline(settings): list(stages)}
        else:
            self.pipelines = pipeline_stages(settings)
        # The default pipeline's stages (what a job without a ``pipeline`` option runs).
        self.stages: list[Stage] = self.pipelines.get(default_pipeline(settings)) or next(iter(self.pipelines.values()))
        self._spans_by_pipeline = {name: _spans(chain) for name, chain in self.pipelines.items()}
        self._spans = _spans(self.stages)
        self.licences = licence_reports(settings, self.pipelines)
        self.loaded = False
        # Seconds each stage took to load its models (reported by /health and the CLI).
        self.load_seconds: dict[str, float] = {}
        self._load_lock = threading.Lock()

    @property
    def stage_names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    def load(self) -> None:
        """Load every stage's models once; concurrent callers wait for the first."""
        with self._load_lock:
            if self.loaded:
                return
            apply_tf32(self.runtime)
            seen: set[int] = set()
            for pipeline, chain in self.pipelines.items():
                for stage in chain:
                    if id(stage) in seen:  # shared by two pipelines: loaded once
                        continue
                    seen.add(id(stage))
                    key = stage.name if stage.name not in self.load_seconds else f"{pipeline}.{stage.name}"
                    started = time.perf_counter()
                    stage.load(self.runtime)
                    self.load_seconds[key] = time.perf_counter() - started
                    log.info("loaded stage %s in %.2fs", key, self.load_seconds[key])
            self.loaded = True

    def warmup(self) -> JobResult:
        """Run one small job end to end so the first real request pays no compile or allocation cost."""
        if not self.loaded:
            self.load()
        steps = min(WARMUP_STEPS, self.settings.multiview.steps)
        # remove_background="on" so the segmentation session is exercised too (its first
        # run allocates); the synthetic object always yields a mask. Every loaded pipeline
        # runs once; the default one last, so its result is the one returned.
        result: JobResult | None = None
        for pipeline in sorted(self.pipelines, key=lambda name: self.pipelines[name] is self.stages):
            options = JobOptions(seed=0, steps=steps, remove_background="on", pipeline=pipeline)  # type: ignore[arg-type]
            result = self.run(warmup_image_png(), options)
        assert result is not None
        return result

    def lane_of(self, stage: Stage) -> Lane:
        """The lane a stage runs in: its ``lane`` attribute ("device" or "host"), "host" when it has none."""
        lane = getattr(stage, "lane", HOST)
        if lane not in (DEVICE, HOST):
            raise StageContractError(f"stage {stage.name} names an unknown lane {lane!r}")
        return lane

    def parts(self, stages: list[Stage] | None = None) -> list["JobPart"]:
        """A pipeline's stages (the default one's unless given) split into the host part before the
        device, the device part and the host part after.

        Everything from the first device stage to the last one runs in the device lane
        (a host stage between two device stages stays with them: one hand-off each way).
        Empty parts are left out; a pipeline with no device stage is one host part.
        """
        stages = self.stages if stages is None else stages
        lanes = [self.lane_of(stage) for stage in stages]
        if DEVICE not in lanes:
            return [JobPart(HOST, tuple(range(len(stages))))] if stages else []
        first = lanes.index(DEVICE)
        last = len(lanes) - 1 - lanes[::-1].index(DEVICE)
        split = [(HOST, range(0, first)), (DEVICE, range(first, last + 1)), (HOST, range(last + 1, len(lanes)))]
        return [JobPart(lane, tuple(indices)) for lane, indices in split if len(indices)]

    def begin(
        self,
        image_bytes: bytes,
        options: JobOptions | None = None,
        *,
        progress: ProgressHandler | Iterable[ProgressHandler] | None = None,
        cancel: CancelToken | None = None,
    ) -> "EngineJob":
        """A job ready to run part by part (``EngineJob.run_part``); ``run`` is this, all parts in order."""
        if not self.loaded:
            self.load()
        resolved = resolve_options(options or JobOptions(), self.settings)
        if resolved.pipeline not in self.pipelines:
            raise PipelineNotLoaded(resolved.pipeline, list(self.pipelines))
        stages, spans = self.pipelines[resolved.pipeline], self._spans_by_pipeline[resolved.pipeline]
        bus = ProgressBus()
        if callable(progress):
            bus.subscribe(progress)
        elif progress is not None:
            for handler in progress:
                bus.subscribe(handler)
        job = JobState(options=resolved, input_bytes=image_bytes)
        job.metadata.update(
            weights_mode=self.settings.weights,
            seed=resolved.seed,
            pipeline=resolved.pipeline,
            artifacts=[dict(row) for row in self.licences.get(resolved.pipeline, [])],
        )
        return EngineJob(self, job, bus, cancel or CancelToken(), stages, spans)

    def run(
        self,
        image_bytes: bytes,
        options: JobOptions | None = None,
        *,
        progress: ProgressHandler | Iterable[ProgressHandler] | None = None,
        cancel: CancelToken | None = None,
    ) -> JobResult:
        job = self.begin(image_bytes, options, progress=progress, cancel=cancel)
        try:
            for part in job.parts:
                job.run_part(part)
            return job.result()
        finally:
            job.close()

    def _run_stage(self, stage: Stage, span: float, job: "EngineJob") -> None:
        job.cancel.raise_if_cancelled()
        ctx = StageContext(self.runtime, stage.name, job.bus, job.cancel, job.start_fraction, span)
        ctx.report(0, 1, "started", check_cancel=False)
        state = job.state
        if self.check_contracts:
            check_stage_inputs(stage, state)
            before = _snapshot(state)
        self.runtime.synchronize()
        started = time.perf_counter()
        try:
            stage.run(state, ctx)
        except Exception as error:
            log.info("stage %s stopped the job: %s: %s", stage.name, type(error).__name__, error)
            raise
        if self.check_contracts:
            check_stage_contract(stage, before, state)
        self.runtime.synchronize()
        job.timings[stage.name] = time.perf_counter() - started
        job.start_fraction += span
        ctx.report(1, 1, "done", check_cancel=False)


@dataclass(frozen=True)
class JobPart:
    """A run of consecutive stages that one lane runs for one job."""

    lane: Lane
    stages: tuple[int, ...]  # indices into the job's pipeline stages


class EngineJob:
    """One job inside the engine, run part by part.

    The lanes (pipeline/lanes.py) run its parts on different threads but never two at
    once and always in order, each hand-off under a lock, so the job's progress events
    stay in order and its state is never shared. ``close`` must run on every path: it
    drops the upload and every intermediate (the device lane's triplanes included).
    """

    def __init__(
        self, engine: Engine, state: JobState, bus: ProgressBus, cancel: CancelToken, stages: list[Stage], spans: list[float]
    ) -> None:
        self.engine = engine
        self.state = state
        self.bus = bus
        self.cancel = cancel
        self.stages, self.spans = stages, spans
        self.parts = engine.parts(stages)
        self.timings: dict[str, float] = {}
        self.start_fraction = 0.0
        self._next_part = 0

    def run_part(self, part: JobPart) -> None:
        """Run ``part``'s stages; a cancellation or deadline stops it before any stage starts."""
        if self._next_part >= len(self.parts) or part is not self.parts[self._next_part]:
            raise StageContractError("a job's parts must run once each, in order")
        self._next_part += 1
        for index in part.stages:
            self.engine._run_stage(self.stages[index], self.spans[index], self)

    def lane_parts(self) -> list[tuple[Lane, Callable[[], None]]]:
        """The parts as ``pipeline.lanes.LaneJob`` takes them."""
        return [(part.lane, functools.partial(self.run_part, part)) for part in self.parts]

    def result(self) -> JobResult:
        job = self.state
        if self._next_part != len(self.parts) or job.glb is None:
            raise Lift3dError("the stages finished without producing a GLB")
        return JobResult(
            glb=job.glb,
            options=job.options,
            timings=dict(self.timings),
            qa=dict(job.qa),
            previews=dict(job.previews),
            weights_mode=self.engine.settings.weights,
            metadata=dict(job.metadata),
        )

    def close(self) -> None:
        """Every path (success, error, cancel) forgets the upload and the intermediates."""
        self.state.drop_inputs()
        self.state.previews = {}


class TerminalProgress:
    """A progress handler that draws one tqdm bar per job (the CLI's view of the events)."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=1000, unit="‰", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

    def __call__(self, event: ProgressEvent) -> None:
        self._bar.n = int(event.fraction * 1000)
        self._bar.set_description(event.stage)
        self._bar.set_postfix_str(f"{event.step}/{event.total} {event.message}".strip())
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()
