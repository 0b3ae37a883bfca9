"""Reconstruct stage: six views -> triplanes -> a surface -> coloured mesh.

Two model families share the stage: the NeRF variants (density grid -> marching
cubes) and the mesh variants (sdf, deformation and weights on the FlexiCubes grid ->
FlexiCubes). Both give world-frame vertices, faces and a colour field read from the
same planes, so the finishing stage bakes either unchanged. Each job picks one of the
loaded models (``options.reconstruct_model``; the server default is
``reconstruct.model``, ``reconstruct.extra_models`` are loaded beside it).

Sub-steps (each reported, with a cancellation check between them): encode,
transformer, grid query, marching cubes / extraction, colour query.

Iso-level: in ``locked`` mode the density is the trained model's and the surface is
taken at ``reconstruct.density_threshold`` (10, the reference's value). With random
weights (``tiny``, ``dummy``) the density has no meaningful scale, so the level is the
``random_weights_iso_quantile`` quantile of the grid (the midpoint between two
neighbouring order statistics, so no grid value sits exactly on it), and the grid's
outer layer is pushed below that level so the surface closes at the box. The rule
and the weights mode are recorded in ``job.metadata`` and ``job.qa``: that geometry
is not a model's.

The mesh variants' surface is the sdf's zero level in ``locked`` mode; with random
weights the same quantile rule picks the level (the same fraction of the grid inside)
and the grid's outer vertices are pushed outside.

In ``tiny`` mode the NeRF grid resolution is capped at the tiny configuration's
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
from models.instantmesh.lrm import InstantMesh
from lift3d.errors import EmptyReconstruction, Lift3dError
from models.isosurface.marching_cubes import marching_cubes
from pipeline.iso_levels import choose_iso_level, choose_sdf_level, close_at_border, close_sdf_at_border
from pipeline.precision import compile_modules, field_precision, lrm_autocast, lrm_autocast_dtype
from pipeline.runtime import Runtime
from pipeline.stage import StageContext
from pipeline.state import ColorQuery, JobState, ReconstructedMesh

log = logging.getLogger("lift3d.reconstruct")

SUBSTEPS = ("encode", "transformer", "grid query", "marching cubes", "colour query")
MESH_SUBSTEPS = ("encode", "transformer", "grid query", "extraction", "colour query")


class TriplaneField(Protocol):
    def density_grid(
        self, planes: torch.Tensor, resolution: int, *, chunk: int, between_chunks: Callable[[], None] | None
    ) -> torch.Tensor: ...

    def rgb(self, planes: torch.Tensor, points: torch.Tensor, *, chunk: int) -> torch.Tensor: ...


class ReconstructionModel(Protocol):
    """What the stage needs of a NeRF-family model (``models.instantmesh.InstantNeRF`` provides it).

    Mesh-family models (``models.instantmesh.InstantMesh``) add ``surface`` and a
    synthesizer with ``vertex_geometry``; the stage tells them apart by that class.
    """

    synthesizer: TriplaneField

    def encode(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor: ...

    def planes_from_tokens(self, tokens: torch.Tensor, batch: int) -> torch.Tensor: ...


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

    def __init__(self, ctx: StageContext, names: tuple[str, ...] = SUBSTEPS) -> None:
        self.ctx = ctx
        self.names = names
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def done(self, name: str) -> None:
        self.ctx.runtime.synchronize()
        now = time.perf_counter()
        self.timings[name] = round(now - self._last, 4)
        self._last = now
        self.ctx.report(self.names.index(name) + 1, len(self.names), name)
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
        # A model handed in (tests, benchmarks) serves every job; otherwise load() fills one per loaded name.
        self.model = model
        self.models: dict[str, ReconstructionModel] = {}
        self.grid_resolution_cap = grid_resolution_cap
        self.load_report: LoadReport | None = None
        self.load_reports: dict[str, LoadReport | None] = {}
        self.model_name = ""
        self.compiled: list[str] = []

    def load(self, runtime: Runtime) -> None:
        self._load(runtime)
        models = {self.model_name: self.model} if self.model is not None else self.models
        self.compiled = compile_modules(
            runtime,
            [
                (f"{name}.{part}", getattr(model, part))
                for name, model in models.items()
                for part in ("encoder", "transformer")
                if hasattr(model, part)
            ],
        )

    def _load(self, runtime: Runtime) -> None:
        settings = runtime.settings.reconstruct
        if self.model is not None:
            self.model_name = type(self.model).__name__
            return
        for name in settings.loaded_models:
            model, report = load_for_mode(runtime.weights_mode, name, weights_dir=runtime.weights_dir, device=runtime.device)
            self.models[name], self.load_reports[name] = model, report
            if runtime.weights_mode == "tiny" and not isinstance(model, InstantMesh):
                self.grid_resolution_cap = model.config.mesh_resolution
        self.model_name = settings.model
        self.load_report = self.load_reports.get(settings.model)

    def _pick(self, job: JobState, settings: ReconstructSettings) -> tuple[str, ReconstructionModel]:
        if self.model is not None:
            return self.model_name, self.model
        wanted = getattr(job.options, "reconstruct_model", "") or settings.model
        if wanted not in self.models:
            raise Lift3dError(f"reconstruct model {wanted!r} is not loaded (loaded: {', '.join(self.models)})")
        return wanted, self.models[wanted]

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

    def _density_surface(
        self, model: ReconstructionModel, planes: torch.Tensor, ctx: StageContext, substeps: SubSteps
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """NeRF family: density grid -> marching cubes -> world vertices."""
        runtime = ctx.runtime
        settings = runtime.settings.reconstruct
        resolution = self.grid_resolution(settings)
        grid = model.synthesizer.density_grid(
            planes, resolution, chunk=settings.color_query_chunk, between_chunks=ctx.check_cancelled
        )[0]
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
        world = (vertices.to(planes.device) / (resolution - 1) * 2 - 1).float()
        substeps.done("marching cubes")
        return world, faces, {"grid_resolution": resolution, "iso_level": level, "iso_rule": rule, "marching_cubes": backend}

    def _flexicubes_surface(
        self, model: InstantMesh, planes: torch.Tensor, ctx: StageContext, substeps: SubSteps
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Mesh family: sdf and deformation on the FlexiCubes grid -> FlexiCubes -> world vertices."""
        runtime = ctx.runtime
        settings = runtime.settings.reconstruct
        grid_res = model.config.grid_res
        vertices, _ = model.flexicubes_grid(planes.device)
        sdf, deformation = model.synthesizer.vertex_geometry(
            planes, vertices, grid_res, chunk=settings.color_query_chunk, between_chunks=ctx.check_cancelled
        )
        sdf, deformation = sdf[0].float(), deformation[0].float()
        level, rule = choose_sdf_level(sdf, weights_mode=runtime.weights_mode, settings=settings)
        if runtime.weights_mode != "locked":
            sdf = close_sdf_at_border(sdf - level, grid_res)
            rule += ", closed at the grid border"
        substeps.done("grid query")

        world, faces = model.surface(planes, sdf, deformation, chunk=settings.color_query_chunk)
        if len(faces) == 0:
            raise EmptyReconstruction(
                f"the reconstructed sdf has no surface at {rule} (FlexiCubes grid {grid_res}^3): "
                "the views show no object the model recognises"
            )
        substeps.done("extraction")
        return world.float(), faces, {"grid_resolution": grid_res, "iso_level": level, "iso_rule": rule, "extraction": "flexicubes"}

    @torch.inference_mode()
    def run(self, job: JobState, ctx: StageContext) -> None:
        runtime = ctx.runtime
        settings = runtime.settings.reconstruct
        name, model = self._pick(job, settings)
        assert model is not None, "the engine loads every stage before it runs one"
        device = runtime.device
        mesh_family = isinstance(model, InstantMesh)
        substeps = SubSteps(ctx, MESH_SUBSTEPS if mesh_family else SUBSTEPS)
        images = self._views(job, device, settings.views)
        cameras = zero123plus_cameras(1, views=settings.views).to(device)
        with lrm_autocast(runtime):
            tokens = model.encode(images, cameras)
        substeps.done("encode")
        with lrm_autocast(runtime):
            planes = model.planes_from_tokens(tokens, 1)
        # The field reads fp32 triplanes: its density (or sdf) is what the iso-level thresholds.
        planes = planes.float()
        del tokens
        substeps.done("transformer")

        with field_precision(runtime):
            if mesh_family:
                world, faces, surface = self._flexicubes_surface(model, planes, ctx, substeps)
            else:
                world, faces, surface = self._density_surface(model, planes, ctx, substeps)

            chunk = settings.color_query_chunk
            vertex_rgb = model.synthesizer.rgb(planes, world.unsqueeze(0), chunk=chunk)[0].clamp(0.0, 1.0)
        substeps.done("colour query")

        job.mesh = ReconstructedMesh(
            vertices=world.cpu().numpy(),
            faces=faces.cpu().numpy().astype(np.int64),
            vertex_colors=vertex_rgb.float().cpu().numpy(),
            color_query=make_color_query(model.synthesizer, planes, chunk),
            iso_level=surface["iso_level"],
            iso_rule=surface["iso_rule"],
        )
        record: dict[str, Any] = {
            "model": name,
            "weights_mode": runtime.weights_mode,
            "views": settings.views,
            "lrm_precision": str(lrm_autocast_dtype(runtime) or torch.float32).removeprefix("torch."),
            "field_precision": "float32",
            **surface,
            "vertices": int(len(world)),
            "faces": int(len(faces)),
            "timings": substeps.timings,
        }
        report = self.load_reports.get(name, self.load_report)
        if report is not None and report.dropped:
            record["checkpoint_dropped_keys"] = list(report.dropped)
        job.metadata["reconstruct"] = record
        job.qa["reconstruct"] = {key: record[key] for key in ("weights_mode", "iso_rule", "iso_level", "vertices", "faces")}
        log.info("reconstructed %d vertices / %d faces with %s at %s", len(world), len(faces), name, surface["iso_rule"])
