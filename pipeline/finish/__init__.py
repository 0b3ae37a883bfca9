"""Finishing stage: a reconstructed mesh in, a clean, UV-textured, glTF-framed GLB out."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from lift3d.errors import Lift3dError
from pipeline.finish.finisher import SUB_STEPS, FinishOptions, FinishResult, finish_mesh
from pipeline.finish.frame import RECON_TO_GLTF, FrameTransform, fit_frame
from pipeline.native_calls import IN_PROCESS, NativeCalls, shared_helper
from pipeline.runtime import Runtime
from pipeline.stage import StageContext
from pipeline.state import JobState

__all__ = [
    "FinishOptions",
    "FinishResult",
    "FinishStage",
    "FrameTransform",
    "RECON_TO_GLTF",
    "SUB_STEPS",
    "finish_mesh",
    "fit_frame",
    "gltf_extras",
]

# Per-stage metadata keys that name which model (and which revision) made the job.
_PROVENANCE_KEYS = ("model", "revision", "revisions", "variant", "weights_mode")


def gltf_extras(metadata: dict[str, Any]) -> dict[str, Any]:
    """What the GLB records about its making: seed, weights mode, pipeline, artifacts and their licences, models and revisions."""
    extras: dict[str, Any] = {"seed": metadata.get("seed"), "weights_mode": metadata.get("weights_mode")}
    # Which pipeline made the model and the licence of every artifact it used (docs/profiles.md).
    for key in ("pipeline", "artifacts"):
        if metadata.get(key) is not None:
            extras[key] = metadata[key]
    models: dict[str, Any] = {}
    for stage, record in metadata.items():
        if isinstance(record, dict):
            provenance = {key: record[key] for key in _PROVENANCE_KEYS if isinstance(record.get(key), (str, int, dict))}
            if provenance:
                models[stage] = provenance
    if models:
        extras["models"] = models
    # The GLB's JSON must stay valid whatever a stage recorded (numpy scalars, paths...).
    return json.loads(json.dumps(extras, default=str))


class FinishStage:
    name: ClassVar[str] = "finish"
    progress_weight: ClassVar[float] = 0.05
    reads: ClassVar[frozenset[str]] = frozenset({"mesh", "metadata"})
    writes: ClassVar[frozenset[str]] = frozenset({"glb", "qa"})

    def __init__(self) -> None:
        self.native: NativeCalls = IN_PROCESS

    def load(self, runtime: Runtime) -> None:
        """No model weights here; with the lanes on, the helper process for the GIL-holding calls."""
        if runtime.settings.overlap and self.native is IN_PROCESS:
            self.native = shared_helper()
            self.native.start()

    def run(self, job: JobState, ctx: StageContext) -> None:
        if job.mesh is None:
            raise Lift3dError("the finish stage needs a reconstructed mesh", code="missing_mesh")
        settings = ctx.runtime.settings.finish
        options = FinishOptions(
            target_faces=job.options.target_faces,
            texture_size=job.options.texture_size,
            texture=job.options.texture,
            debris_fraction=settings.debris_fraction,
            scale=settings.scale,
            charts=settings.charts,
            png_compression=settings.png_compression,
        )
        result = finish_mesh(
            job.mesh.vertices,
            job.mesh.faces,
            job.mesh.color_query,
            options,
            extras=gltf_extras(job.metadata),
            device=ctx.runtime.device,
            on_step=lambda step, total, name: ctx.report(step, total, name),
            check_cancelled=ctx.check_cancelled,
            native=self.native,
        )
        job.glb = result.glb
        job.qa.update(result.qa)
