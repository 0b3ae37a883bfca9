"""The finishing pipeline as one function: clean, decimate, unwrap, bake, export.

``FinishStage`` wraps it for the engine; the tests and the benchmark call it directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np
import torch

from lift3d.errors import EmptyReconstruction
from pipeline.finish.bake import BakedTexture, bake_texture, query_colours
from pipeline.finish.clean import clean_mesh
from pipeline.finish.color import srgb_to_linear
from pipeline.finish.decimate import decimate
from pipeline.finish.export import DEFAULT_PNG_COMPRESSION, export_glb
from pipeline.finish.frame import FrameTransform, fit_frame
from pipeline.finish.qa import mesh_qa
from pipeline.finish.unwrap import ChartMethod, UVMesh, unwrap
from pipeline.native_calls import IN_PROCESS, NativeCalls
from pipeline.state import ColorQuery

SUB_STEPS = ("clean", "decimate", "unwrap", "bake", "export")
# Above this share of doubly covered texels a box layout is redone by xatlas itself.
OVERLAP_TOLERANCE = 0.002


@dataclass(frozen=True)
class FinishOptions:
    target_faces: int = 50_000  # 0 keeps every face
    texture_size: int = 1024
    texture: Literal["uv", "vertex"] = "uv"
    debris_fraction: float = 0.05
    scale: float = 1.0  # largest extent in metres
    charts: ChartMethod = "box"
    png_compression: int = DEFAULT_PNG_COMPRESSION  # zlib level of the texture PNG


@dataclass
class FinishResult:
    glb: bytes
    qa: dict[str, Any]
    timings: dict[str, float]  # seconds per sub-step
    transform: FrameTransform  # reconstruction frame -> glTF frame
    uv_mesh: UVMesh | None = None  # reconstruction frame, as baked
    texture: BakedTexture | None = None
    notes: list[str] = field(default_factory=list)


StepCallback = Callable[[int, int, str], None]


def finish_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    color_query: ColorQuery,
    options: FinishOptions,
    *,
    extras: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    on_step: StepCallback | None = None,
    check_cancelled: Callable[[], None] | None = None,
    native: NativeCalls = IN_PROCESS,
) -> FinishResult:
    """Finish a reconstruction-frame mesh whose colours ``color_query`` gives (sRGB) into GLB bytes."""
    timings: dict[str, float] = {}
    notes: list[str] = []
    clock = time.perf_counter()

    def step_done(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now
        if on_step is not None:
            on_step(SUB_STEPS.index(name) + 1, len(SUB_STEPS), name)
        if check_cancelled is not None:
            check_cancelled()

    mesh, clean_report = clean_mesh(vertices, faces, options.debris_fraction)
    if len(mesh.faces) == 0:
        raise EmptyReconstruction("the reconstructed mesh has no faces left after cleaning (all were degenerate)")
    step_done("clean")

    mesh = decimate(mesh, options.target_faces, native)
    step_done("decimate")

    transform = fit_frame(mesh.vertices, options.scale)
    welded_normals = mesh.vertex_normals
    uv_mesh: UVMesh | None = None
    baked: BakedTexture | None = None
    if options.texture == "uv":
        uv_mesh = unwrap(mesh, options.texture_size, options.charts, native)
        step_done("unwrap")
        baked = bake_texture(uv_mesh.vertices, uv_mesh.faces, uv_mesh.uvs, color_query, options.texture_size, device)
        if uv_mesh.method == "box" and baked.overlap_fraction > OVERLAP_TOLERANCE:
            notes.append(f"box charts overlapped on {baked.overlap_fraction:.2%} of texels; re-unwrapped by xatlas")
            uv_mesh = unwrap(mesh, options.texture_size, "xatlas", native)
            baked = bake_texture(uv_mesh.vertices, uv_mesh.faces, uv_mesh.uvs, color_query, options.texture_size, device)
        step_done("bake")
        glb = export_glb(
            transform.to_gltf(uv_mesh.vertices),
            uv_mesh.faces,
            transform.rotate_directions(np.asarray(welded_normals).take(uv_mesh.source_vertex, axis=0)),
            uvs=uv_mesh.uvs,
            texture=baked.image,
            extras=extras,
            png_compression=options.png_compression,
        )
    else:
        step_done("unwrap")  # vertex colours need no UV layout
        srgb = query_colours(color_query, mesh.vertices.astype(np.float32))
        step_done("bake")
        glb = export_glb(
            transform.to_gltf(mesh.vertices),
            mesh.faces,
            transform.rotate_directions(welded_normals),
            linear_vertex_colors=srgb_to_linear(srgb),
            extras=extras,
        )
    step_done("export")

    bounds = transform.to_gltf(mesh.vertices)
    qa = mesh_qa(mesh, clean_report, np.stack([bounds.min(axis=0), bounds.max(axis=0)]))
    qa.update(
        texture=options.texture,
        texture_size=options.texture_size if options.texture == "uv" else None,
        uv_charts=uv_mesh.charts if uv_mesh is not None else None,
        uv_chart_method=uv_mesh.method if uv_mesh is not None else None,
        bytes=len(glb),
        finish_seconds={name: round(seconds, 4) for name, seconds in timings.items()},
    )
    if notes:
        qa["notes"] = notes
    return FinishResult(glb, qa, timings, transform, uv_mesh, baked, notes)
