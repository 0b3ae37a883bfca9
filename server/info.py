"""What ``GET /v1/info`` reports: version, profile, device and the models the engine reads."""

from __future__ import annotations

import logging
from typing import Any

import msgspec

import lift3d
from lift3d.settings import Settings
from lift3d.weights.catalog import LockError, engine_artifacts, profile_for
from pipeline.runtime import Runtime
from server.schemas import ArtifactLicence, Info, Limits, ModelInfo, PipelineInfo

log = logging.getLogger("lift3d.server")


def engine_models(settings: Settings) -> list[ModelInfo]:
    """Each weight file the engine reads, with its revision and licence, from weights.lock."""
    try:
        artifacts = engine_artifacts(settings.engine)
    except (LockError, OSError) as error:  # /v1/info answers even without a readable lock
        log.warning("weights.lock not readable for /v1/info (%s)", type(error).__name__)
        return []
    return [
        ModelInfo(
            name=artifact.path,
            repo=artifact.hub_source.repo if artifact.hub_source is not None else None,
            revision=artifact.revision,
            license=artifact.licence,
        )
        for artifact in artifacts
    ]


def pipeline_infos(licences: dict[str, list[dict[str, Any]]], default: str) -> list[PipelineInfo]:
    """Each loaded pipeline with the licence of every artifact it uses (the engine's licence reports)."""
    infos = []
    for name, rows in licences.items():
        artifacts = [msgspec.convert(row, ArtifactLicence) for row in rows]
        infos.append(
            PipelineInfo(
                name=name,
                default=name == default,
                commercial_use=bool(artifacts) and all(a.commercial_use for a in artifacts),
                artifacts=artifacts,
            )
        )
    return infos


def background_provider(engine: object) -> str | None:
    """Where the engine's background stage segments (None before it loaded, or without one)."""
    for stage in getattr(engine, "stages", ()):
        if stage.name == "background":
            return getattr(stage, "provider", None)
    return None


def build_info(
    settings: Settings,
    runtime: Runtime,
    ready: bool,
    models: list[ModelInfo],
    pipelines: list[PipelineInfo] | None = None,
    *,
    provider: str | None = None,
) -> Info:
    try:
        profile = profile_for(settings.engine)
    except LockError:
        profile = settings.engine.weights
    return Info(
        version=lift3d.__version__,
        profile=profile,
        weights_mode=settings.engine.weights,
        device=str(runtime.device),
        dtype=str(runtime.dtype).removeprefix("torch."),
        ready=ready,
        models=models,
        server_profile=settings.engine.profile,
        pipelines=list(pipelines or []),
        limits=Limits(
            max_upload_bytes=settings.engine.decode.max_upload_bytes,
            max_pixels=settings.engine.decode.max_pixels,
            queue_size=settings.server.queue_size,
            job_deadline_seconds=settings.server.job_deadline_seconds,
            default_retention_seconds=settings.storage.default_retention_seconds,
            max_retention_seconds=settings.storage.max_retention_seconds,
        ),
        background_provider=provider,
    )
