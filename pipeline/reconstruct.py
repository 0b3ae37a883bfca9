"""Reconstruct stage: six views -> triplanes -> density grid -> marching cubes -> coloured mesh.

Sub-steps (each reported, with a cancellation check between them): encode,
transformer, grid query, marching cubes, colour query.

Iso-level: in ``locked`` mode the density is the trained model's and the surface is
taken at ``reconstruct.density_threshold`` (10, the reference's value). With random
weights (``tiny``, ``dummy``) the density has no meaningful scale, so the level is the
``random_weights_iso_quantile`` quantile of the grid (the midpoint between two
neighbouring order statistics, so no grid value sits exactly on it), and the grid's
outer layer is pushed below that level so the surface closes at the box. The rule
and the weights mode are recorded in ``job.metadata`` and ``job.qa``: that geometry
is not a model's.

In ``tiny`` mode the grid resolution is capped at the tiny configuration's
``mesh_resolution`` (32) so whole jobs run in seconds on a CPU.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, ClassVar, Protocol

import numpy as np
import torch

from lift3d.settings import ReconstructSettings
from models.instantmesh.cameras import view_indices, zero123plus_cameras
from models.instantmesh.loading import LoadReport, load_for_mode
from lift3d.errors import EmptyReconstruction, Lift3dError
from models.isosurface.marching_cubes import marching_cubes
from pipeline.precision import compile_modules, field_precision, lrm_autocast, lrm_autocast_dtype
from pipeline.runtime import Runtime
from pipeline.stage import StageContext
from pipeline.state import ColorQuery, JobState, ReconstructedMesh

log = logging.getLogger("lift3d.reconstruct")

SUBSTEPS = ("encode", "transformer", "grid query", "marching cubes", "colour query")


class TriplaneField(Protocol):
    def density_grid(
        self, planes: torch.Tensor, resolution: int, *, chunk: int, between_chunks: Callable[[], None] | None
    ) -> torch.Tensor: ...

    def rgb(self, planes: torch.Tensor, points: torch.Tensor, *, chunk: int) -> torch.Tensor: ...


class ReconstructionModel(Protocol):
    """What the stage needs of the model (``models.instantmesh.InstantNeRF`` provides it)."""

    synthesizer: TriplaneField

    def encode(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor: ...

    def planes_from_tokens(self, tokens: torch.Tensor, batch: int) -> torch.Tensor: ...


def choose_iso_level(grid: torch.Tensor, *, weights_mode: str, settings: ReconstructSettings) -> tuple[float, str]:
    if weights_mode == "locked":
        return float(settings.density_threshold), f"threshold {settings.density_threshold:g}"
    quantile = float(settings.random_weights_iso_quantile)
    flat = grid.reshape(-1)
    k = min(max(int(quantile * flat.numel()), 1), flat.numel() - 1)
    lower = flat.kthvalue(k).values
    upper = flat.kthvalue(k + 1).values
    level = float((lower.double() + upper.double()) / 2)
    return level, f"quantile {quantile:g} of the density grid ({weights_mode} weights: density has no scale)"


def close_at_border(grid: torch.Tensor, level: float) -> torch.Tensor:
    """Push the outer layer below ``level`` so the iso-surface of a random field is closed."""
    closed = grid.clone()
    floor = min(float(grid.min()), level) - 1.0
    for axis in range(3):
        closed.narrow(axis, 0, 1).fill_(floor)
        closed.narrow(axis, closed.shape[axis] - 1, 1).fill_(floor)
    return closed


def make_color_query(field: TriplaneField, planes: torch.Tensor, chunk: int) -> ColorQuery:
    """points [N, 3] float32 (world) -> sRGB [N, 3] float32 in [0, 1], queried ``chunk`` points at a time on the device."""

    def color_query(points: np.ndarray) -> np.ndarray:
        array = np.asarray(points, dtype=np.float32).reshape(-1, 3)
        if len(array) == 0:
            return np.zeros((0, 3), dtype=np.float32)
        with torch.inference_mode():
            tensor = torch.from_numpy(array).to(planes.device)
            rgb = field.rgb(planes, tensor.unsqueeze(0), chunk=chunk)[0]
            return rgb.clamp(0.0, 1.0).float().cpu().numpy()

    return color_query


class SubSteps:
    """Times each sub-step (CUDA-synchronised), reports it, then honours a pending cancellation."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def done(self, name: str) -> None:
        self.ctx.runtime.synchronize()
        now = time.perf_counter()
        self.timings[name] = round(now - self._last, 4)
        self._last = now
        self.ctx.report(SUBSTEPS.index(name) + 1, len(SUBSTEPS), name)
        self.ctx.check_cancelled()


class ReconstructStage:
    name: ClassVar[str] = "reconstruct"
    progress_weight: ClassVar[float] = 1.0
    # The finishing stage's colour query reads this job's triplanes on the device from the
    # host lane: a short burst of small kernels, cheaper than a round trip through this lane.
    lane: ClassVar[str] = "device"
    reads: ClassVar[frozenset[str]] = frozenset({"views"})
    writes: ClassVar[frozenset[str]] = frozenset({"mesh", "metadata", "qa"})

    def __init__(self, model: ReconstructionModel | None = None, *, grid_resolution_cap: int | None = None) -> None:
        self.model = model
        self.grid_resolution_cap = grid_resolution_cap
        self.load_report: LoadReport | None = None
        self.model_name = ""
        self.compiled: list[str] = []

    def load(self, runtime: Runtime) -> None:
        settings = runtime.settings.reconstruct
        if self.model is None:
            model, self.load_report = load_for_mode(
                runtime.weights_mode, settings.model, weights_dir=runtime.weights_dir, device=runtime.device
            )
            self.model = model
            self.model_name = model.config.name
            if runtime.weights_mode == "tiny":
                self.grid_resolution_cap = model.config.mesh_resolution
        else:
            self.model_name = type(self.model).__name__
        self.compiled = compile_modules(
            runtime, [(f"lrm.{name}", getattr(self.model, name)) for name in ("encoder", "transformer") if hasattr(self.model, name)]
        )

    def grid_resolution(self, settings: ReconstructSettings) -> int:
        resolution = settings.grid_resolution
        if self.grid_resolution_cap is not None:
            resolution = min(resolution, self.grid_resolution_cap)
        if resolution < 2:
            raise Lift3dError(f"grid resolution must be at least 2, got {resolution}")
        return resolution

    def _views(self, job: JobState, device: torch.device, views: int) -> torch.Tensor:
        images = job.views
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] != 6 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise Lift3dError(f"reconstruct needs job.views as a [6, 3, H, W] tensor, got {shape}")
        selected = images[list(view_indices(views))]
        return selected.to(device=device, dtype=torch.float32).clamp(0.0, 1.0).unsqueeze(0)

    @torch.inference_mode()
    def run(self, job: JobState, ctx: StageContext) -> None:
        runtime = ctx.runtime
        model = self.model
        assert model is not None, "the engine loads every stage before it runs one"
        settings = runtime.settings.reconstruct
        device = runtime.device
        substeps = SubSteps(ctx)
        images = self._views(job, device, settings.views)
        cameras = zero123plus_cameras(1, views=settings.views).to(device)
        with lrm_autocast(runtime):
            tokens = model.encode(images, cameras)
        substeps.done("encode")
        with lrm_autocast(runtime):
            planes = model.planes_from_tokens(tokens, 1)
        # The field reads fp32 triplanes: its density is what the iso-level thresholds.
        planes = planes.float()
        del tokens
        substeps.done("transformer")

        resolution = self.grid_resolution(settings)
        chunk = settings.color_query_chunk
        with field_precision(runtime):
            grid = model.synthesizer.density_grid(planes, resolution, chunk=chunk, between_chunks=ctx.check_cancelled)[0]
        level, rule = choose_iso_level(grid, weights_mode=runtime.weights_mode, settings=settings)
        if runtime.weights_mode != "locked":
            grid = close_at_border(grid, level)
            rule += ", closed at the grid border"
        substeps.done("grid query")

        vertices, faces, backend = marching_cubes(grid, level)
        del grid
        if len(faces) == 0:
            raise EmptyReconstruction(
                f"the reconstructed density has no surface at {rule} (grid {resolution}^3): "
                "the views show no object the model recognises"
            )
        world = (vertices.to(device) / (resolution - 1) * 2 - 1).float()
        substeps.done("marching cubes")

        with field_precision(runtime):
            vertex_rgb = model.synthesizer.rgb(planes, world.unsqueeze(0), chunk=chunk)[0].clamp(0.0, 1.0)
        substeps.done("colour query")

        job.mesh = ReconstructedMesh(
            vertices=world.cpu().numpy(),
            faces=faces.cpu().numpy().astype(np.int64),
            vertex_colors=vertex_rgb.float().cpu().numpy(),
            color_query=make_color_query(model.synthesizer, planes, chunk),
            iso_level=level,
            iso_rule=rule,
        )
        record: dict[str, Any] = {
            "model": self.model_name,
            "weights_mode": runtime.weights_mode,
            "views": settings.views,
            "lrm_precision": str(lrm_autocast_dtype(runtime) or torch.float32).removeprefix("torch."),
            "field_precision": "float32",
            "grid_resolution": resolution,
            "iso_level": level,
            "iso_rule": rule,
            "marching_cubes": backend,
            "vertices": int(len(world)),
            "faces": int(len(faces)),
            "timings": substeps.timings,
        }
        if self.load_report is not None and self.load_report.dropped:
            record["checkpoint_dropped_keys"] = list(self.load_report.dropped)
        job.metadata["reconstruct"] = record
        job.qa["reconstruct"] = {key: record[key] for key in ("weights_mode", "iso_rule", "iso_level", "vertices", "faces")}
        log.info("reconstructed %d vertices / %d faces at %s (%s)", len(world), len(faces), rule, backend)
