"""The multiview stage: the cut-out -> six views around the object (Zero123++ v1.2).

Seeds: one CPU ``torch.Generator`` seeded with the job seed feeds both of the
pipeline's noise streams, interleaved in the reference's order. That is the
reference's protocol without an explicit generator (InstantMesh's run.py), so a
job seed reproduces the same noise on any machine, device and dtype: every draw
is float32 on the CPU and then moved to the GPU. The process RNG is never touched,
so concurrent or successive jobs cannot leak randomness into each other.

Tiny mode generates 160 px views (a 320x480 grid) and resizes them to the
320 px contract, so CPU test jobs stay fast; locked and dummy modes generate the
real 640x960 grid.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar, Iterator

import torch
import torch.nn.functional as F
from PIL import Image

from models.zero123plus.factory import MultiviewModel, build_multiview_model
from pipeline.precision import compile_modules
from pipeline.runtime import Runtime
from pipeline.stage import StageContext
from pipeline.png import png_bytes
from pipeline.state import VIEWS_PREVIEW, JobState

VIEW_SIZE = 320
GRID_SIZE = (2 * VIEW_SIZE, 3 * VIEW_SIZE)  # PIL (width, height)


def lock_revisions(stage: str = "multiview") -> dict[str, str]:
    """weights.lock's pinned revision (or status) per multiview artifact; empty if no lock is readable."""
    from lift3d.weights.catalog import LockError, default_lock

    try:
        lock = default_lock()
    except (LockError, OSError):
        return {}
    return {
        artifact.path: artifact.revision or (artifact.sha256 and f"sha256:{artifact.sha256}") or artifact.status
        for artifact in lock.artifacts
        if artifact.stage == stage
    }


def _views_to_contract(views: torch.Tensor) -> torch.Tensor:
    if views.shape[-1] == VIEW_SIZE and views.shape[-2] == VIEW_SIZE:
        return views.contiguous()
    resized = F.interpolate(views, size=(VIEW_SIZE, VIEW_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return resized.clamp(0, 1)


@contextmanager
def intra_op_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch intra-op threads, restoring the previous setting (jobs run one at a time)."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class MultiviewStage:
    name: ClassVar[str] = "multiview"
    progress_weight: ClassVar[float] = 0.55
    lane: ClassVar[str] = "device"
    reads: ClassVar[frozenset[str]] = frozenset({"cutout"})
    writes: ClassVar[frozenset[str]] = frozenset({"views", "views_grid", "previews", "metadata"})

    def __init__(self, model: MultiviewModel | None = None) -> None:
        self.model = model
        self._info: dict[str, object] = {}

    def load(self, runtime: Runtime) -> None:
        if self.model is None:
            settings = runtime.settings
            self.model = build_multiview_model(
                settings.weights,
                weights_dir=runtime.weights_dir,
                variant=settings.multiview.variant,
                device=runtime.device,
                dtype=runtime.dtype,
            )
        unet = [("unet", self.model.pipeline.components.unet)] if runtime.settings.compile else []
        compiled = compile_modules(runtime, unet)
        self._info = {
            **self.model.info,
            "compiled": compiled,
            "weights_mode": runtime.weights_mode,
            "variant": runtime.settings.multiview.variant,
            "dtype": str(runtime.dtype).removeprefix("torch."),
            "generated_size": [self.model.width, self.model.height],
            "noise": "one CPU float32 torch.Generator(seed) for both streams, reference draw order",
        }
        if runtime.weights_mode == "locked":
            self._info["revisions"] = lock_revisions()

    def run(self, job: JobState, ctx: StageContext) -> None:
        assert self.model is not None, "the engine loads every stage before it runs one"
        options = job.options
        steps = options.steps

        def on_step_end(_pipeline, index: int, _timestep: float, tensors: dict) -> dict:
            ctx.report(index + 1, steps, f"denoising step {index + 1}/{steps}")
            ctx.check_cancelled()
            return tensors

        ctx.check_cancelled()
        with intra_op_threads(self.model.cpu_threads):
            output = self.model.pipeline(
                job.cutout,
                num_inference_steps=steps,
                guidance_scale=options.guidance,
                width=self.model.width,
                height=self.model.height,
                generator=torch.Generator("cpu").manual_seed(options.seed),
                callback_on_step_end=on_step_end,
            )
        job.views = _views_to_contract(output.views).float().cpu()
        job.views_grid = output.grid if output.grid.size == GRID_SIZE else output.grid.resize(GRID_SIZE, Image.BICUBIC)
        if options.return_views:
            job.previews[VIEWS_PREVIEW] = png_bytes(job.views_grid)
        job.metadata["multiview"] = {**self._info, "seed": options.seed, "steps": steps, "guidance": options.guidance}
