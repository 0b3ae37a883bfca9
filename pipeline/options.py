"""Per-job options: what a client may choose, validated against hard ranges."""

from __future__ import annotations

import secrets
from typing import Literal

import msgspec

from lift3d.settings import EngineSettings, PipelineName
from lift3d.errors import InvalidOption, PipelineNotLoaded

# Inclusive ranges; the server documents them in OpenAPI and answers 422 outside.
STEPS_RANGE = (1, 200)
GUIDANCE_RANGE = (1.0, 20.0)
SEED_RANGE = (0, 2**63 - 1)
TARGET_FACES_RANGE = (500, 2_000_000)  # or 0 = keep every face
TEXTURE_SIZE_RANGE = (512, 2048)


class JobOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the client asked for; ``None`` means "the server's default"."""

    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    remove_background: Literal["auto", "on", "off"] | None = None
    target_faces: int | None = None
    texture_size: int | None = None
    texture: Literal["uv", "vertex"] | None = None
    return_views: bool = False
    # None: the server's default pipeline (multiview where loaded, else the profile's first).
    pipeline: PipelineName | None = None
    reconstruct_model: str | None = None


class ResolvedOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Every option made concrete; recorded in the job result."""

    seed: int
    steps: int
    guidance: float
    remove_background: Literal["auto", "on", "off"]
    target_faces: int
    texture_size: int
    texture: Literal["uv", "vertex"]
    return_views: bool
    pipeline: PipelineName = "multiview"
    reconstruct_model: str = ""


def default_pipeline(settings: EngineSettings) -> PipelineName:
    loaded = settings.pipelines
    return "multiview" if "multiview" in loaded else loaded[0]


def _check_range(name: str, value: float, bounds: tuple[float, float]) -> None:
    low, high = bounds
    if not (low <= value <= high):
        raise InvalidOption(f"{name} must be between {low} and {high}, got {value}", code=f"invalid_{name}")


def _reconstruct_model(options: JobOptions, settings: EngineSettings) -> str:
    """The job's reconstruction model: one the server has loaded, else a 422 naming them."""
    loaded = settings.reconstruct.loaded_models
    chosen = options.reconstruct_model or settings.reconstruct.model
    if chosen not in loaded:
        raise InvalidOption(
            f"reconstruct_model must be one of the loaded models {', '.join(loaded)}; got {chosen!r}",
            code="invalid_reconstruct_model",
        )
    return chosen


def resolve_options(options: JobOptions, settings: EngineSettings) -> ResolvedOptions:
    seed = options.seed if options.seed is not None else secrets.randbelow(2**31)
    steps = options.steps if options.steps is not None else settings.multiview.steps
    guidance = options.guidance if options.guidance is not None else settings.multiview.guidance
    target_faces = options.target_faces if options.target_faces is not None else settings.finish.target_faces
    texture_size = options.texture_size if options.texture_size is not None else settings.finish.texture_size
    _check_range("seed", seed, SEED_RANGE)
    _check_range("steps", steps, STEPS_RANGE)
    _check_range("guidance", guidance, GUIDANCE_RANGE)
    if target_faces != 0:
        _check_range("target_faces", target_faces, TARGET_FACES_RANGE)
    _check_range("texture_size", texture_size, TEXTURE_SIZE_RANGE)
    pipeline = options.pipeline or default_pipeline(settings)
    if pipeline not in settings.pipelines:
        raise PipelineNotLoaded(pipeline, settings.pipelines)
    return ResolvedOptions(
        seed=seed,
        steps=steps,
        guidance=float(guidance),
        remove_background=options.remove_background or settings.background.default_mode,
        target_faces=target_faces,
        texture_size=texture_size,
        texture=options.texture or settings.finish.texture,
        return_views=options.return_views,
        pipeline=pipeline,
        reconstruct_model=_reconstruct_model(options, settings) if pipeline == "multiview" else _single_view(options),
    )


def _single_view(options: JobOptions) -> str:
    """The fast pipeline has one reconstruction model (TripoSR): ``reconstruct_model`` names InstantMesh's."""
    if options.reconstruct_model:
        raise InvalidOption(
            "reconstruct_model chooses the multiview pipeline's model; the fast pipeline has only TripoSR",
            code="invalid_reconstruct_model",
        )
    return ""
