"""The fast pipeline's reconstruct stage: the cut-out -> TripoSR scene code -> density grid -> coloured mesh.

Sub-steps (each reported, with a cancellation check between them): image tokens (the
DINO ViT), triplanes (the transformer and upsampler), grid query, marching cubes,
colour query.

Frame: TripoSR's world is the multiview path's reconstruction frame already (+z up,
the input view's camera on +x, its right-hand direction +y; docs/triposr.md gives the
evidence), so the mesh goes to finishing unrotated and finishing's one frame change
(``pipeline.finish.frame``) puts the photographed side on glTF +Z. The cube is
``[-0.87, 0.87]^3`` rather than ``[-1, 1]^3``; finishing rescales to metres anyway.

Iso-level: ``fast.density_threshold`` (25, the reference's) with the trained weights;
with random weights (``tiny``, ``dummy``) the multiview stage's quantile rule and
border closing (``pipeline.iso_levels``), recorded in the metadata as there.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

import msgspec
import numpy as np
import torch

from lift3d.errors import EmptyReconstruction, Lift3dError
from models.isosurface.marching_cubes import marching_cubes
from models.triposr import TripoSR, load_for_mode, prepare_rgba
from pipeline.iso_levels import choose_iso_level, close_at_border
from pipeline.reconstruct import make_color_query
from pipeline.runtime import Runtime
from pipeline.stage import StageContext
from pipeline.state import JobState, ReconstructedMesh

log = logging.getLogger("lift3d.single_view")

SUBSTEPS = ("image tokens", "triplanes", "grid query", "marching cubes", "colour query")


class SingleViewReconstructStage:
    """``reconstruct`` for the fast pipeline: the same name and output (a mesh with a colour query) as the multiview one."""

    name: ClassVar[str] = "reconstruct"
    progress_weight: ClassVar[float] = 0.5
    lane: ClassVar[str] = "device"
    reads: ClassVar[frozenset[str]] = frozenset({"cutout"})
    writes: ClassVar[frozenset[str]] = frozenset({"mesh", "metadata", "qa"})

    def __init__(self, model: TripoSR | None = None, *, grid_resolution_cap: int | None = None) -> None:
        self.model = model
        self.grid_resolution_cap = grid_resolution_cap

    def load(self, runtime: Runtime) -> None:
        if self.model is None:
            self.model = load_for_mode(runtime.weights_mode, weights_dir=runtime.weights_dir, device=runtime.device)
        if runtime.weights_mode == "tiny" and self.grid_resolution_cap is None:
            self.grid_resolution_cap = self.model.config.mesh_resolution

    def grid_resolution(self, requested: int) -> int:
        resolution = min(requested, self.grid_resolution_cap) if self.grid_resolution_cap else requested
        if resolution < 2:
            raise Lift3dError(f"grid resolution must be at least 2, got {resolution}")
        return resolution

    @torch.inference_mode()
    def run(self, job: JobState, ctx: StageContext) -> None:
        model = self.model
        assert model is not None, "the engine loads every stage before it runs one"
        runtime = ctx.runtime
        settings = runtime.settings.fast
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def done(name: str) -> None:
            nonlocal clock
            runtime.synchronize()
            now = time.perf_counter()
            timings[name] = round(now - clock, 4)
            clock = now
            ctx.report(SUBSTEPS.index(name) + 1, len(SUBSTEPS), name)

        rgba = np.asarray(job.cutout.convert("RGBA"))
        rgb = prepare_rgba(rgba, foreground_ratio=settings.foreground_ratio)
        tokens = model.image_tokens(model.preprocess([rgb]))
        done("image tokens")
        codes = model.scene_codes_from_tokens(model.backbone_tokens(tokens))
        del tokens
        done("triplanes")

        resolution = self.grid_resolution(settings.grid_resolution)
        chunk = settings.query_chunk
        field = model.field
        grid = field.density_grid(codes, resolution, chunk=chunk, between_chunks=ctx.check_cancelled)[0]
        # The multiview stage's rule, at TripoSR's threshold: one quantile rule for random weights.
        rule_settings = msgspec.structs.replace(runtime.settings.reconstruct, density_threshold=settings.density_threshold)
        level, rule = choose_iso_level(grid, weights_mode=runtime.weights_mode, settings=rule_settings)
        if runtime.weights_mode != "locked":
            grid = close_at_border(grid, level)
            rule += ", closed at the grid border"
        done("grid query")

        index_vertices, faces, backend = marching_cubes(grid, level)
        del grid
        if len(faces) == 0:
            raise EmptyReconstruction(
                f"the reconstructed density has no surface at {rule} (grid {resolution}^3): "
                "the image shows no object the model recognises"
            )
        world = field.grid_to_world(index_vertices.to(codes.device), resolution).float()
        done("marching cubes")

        vertex_rgb = field.rgb(codes, world[None], chunk=chunk)[0].clamp(0.0, 1.0)
        done("colour query")

        job.mesh = ReconstructedMesh(
            vertices=world.cpu().numpy(),
            faces=faces.cpu().numpy().astype(np.int64),
            vertex_colors=vertex_rgb.float().cpu().numpy(),
            color_query=make_color_query(field, codes, chunk),
            iso_level=level,
            iso_rule=rule,
        )
        record: dict[str, Any] = {
            "model": model.config.name,
            "weights_mode": runtime.weights_mode,
            "grid_resolution": resolution,
            "radius": float(field.radius),
            "iso_level": level,
            "iso_rule": rule,
            "marching_cubes": backend,
            "vertices": int(len(world)),
            "faces": int(len(faces)),
            "timings": timings,
        }
        job.metadata["reconstruct"] = record
        job.qa["reconstruct"] = {key: record[key] for key in ("weights_mode", "iso_rule", "iso_level", "vertices", "faces")}
        log.info("TripoSR: %d vertices / %d faces at %s (%s)", len(world), len(faces), rule, backend)
