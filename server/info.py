"""What ``GET /v1/info`` reports: version, profile, device and the pinned models."""

from __future__ import annotations

import logging

import lift3d
from lift3d.settings import Settings
from pipeline.runtime import Runtime
from server.schemas import Info, Limits, ModelInfo

log = logging.getLogger("lift3d.server")


def active_profile(settings: Settings) -> str:
    """The weights.lock profile this configuration runs (``tiny``/``dummy`` name themselves)."""
    mode = settings.engine.weights
    if mode != "locked":
        return mode
    return "fast" if settings.engine.reconstruct.model == "instant-nerf-base" else "quality"


def pinned_models(profile: str) -> list[ModelInfo]:
    """Each weight file of the profile with its revision and licence, from weights.lock when present."""
    try:
        from lift3d.weights.lock import load_lock

        lock = load_lock()
        artifacts = lock.for_profile(profile) if profile in lock.profiles else lock.artifacts
    except Exception as error:  # noqa: BLE001 - /v1/info answers even without a readable lock
        log.warning("weights.lock not readable for /v1/info (%s)", type(error).__name__)
        return []
    models = []
    for artifact in artifacts:
        hub = artifact.hub_source
        models.append(
            ModelInfo(
                name=artifact.path,
                repo=hub.repo if hub is not None else None,
                revision=artifact.revision,
                license=artifact.licence,
            )
        )
    return models


def build_info(settings: Settings, runtime: Runtime, ready: bool) -> Info:
    profile = active_profile(settings)
    return Info(
        version=lift3d.__version__,
        profile=profile,
        weights_mode=settings.engine.weights,
        device=str(runtime.device),
        dtype=str(runtime.dtype).removeprefix("torch."),
        ready=ready,
        models=pinned_models(profile),
        limits=Limits(
            max_upload_bytes=settings.engine.decode.max_upload_bytes,
            max_pixels=settings.engine.decode.max_pixels,
            queue_size=settings.server.queue_size,
            job_deadline_seconds=settings.server.job_deadline_seconds,
            default_retention_seconds=settings.storage.default_retention_seconds,
            max_retention_seconds=settings.storage.max_retention_seconds,
        ),
    )
