"""Pinned weights: what the rest of lift3d asks about weight files.

- ``load_lock()`` / ``artifacts_for(profile)``: the lock and a profile's artifacts;
- ``sha256_for(path)``: the pinned digest of one file (e.g. the rembg model for the background loader);
- ``engine_artifacts(settings)`` / ``profile_for(settings)``: the files an engine
  configuration reads, and the profile that pulls them;
- ``artifact_info(settings)``: licence, revision and source per file, for ``/v1/info``;
- ``missing_files(settings)`` / ``weights_missing(...)``: a cheap presence check and the
  error (naming the command to run) that loaders and ``serve`` raise.

Importing this package is cheap: nothing here imports torch or touches the network.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from lift3d.settings import EngineSettings
from lift3d.weights.lock import DEFAULT_LOCK_PATH, Artifact, LockError, WeightsLock, load_lock
from lift3d.errors import WeightsMissing

__all__ = [
    "Artifact",
    "LockError",
    "WeightsLock",
    "artifact_info",
    "artifacts_for",
    "engine_artifacts",
    "load_lock",
    "missing_files",
    "profile_for",
    "pull_command",
    "sha256_for",
    "weights_missing",
]

ZERO123PLUS_DIR = "sudo-ai/zero123plus-v1.2/"
INSTANTMESH_UNET = "TencentARC/InstantMesh/diffusion_pytorch_model.safetensors"
RECONSTRUCT_FILES = {
    "instant-nerf-large": "TencentARC/InstantMesh/instant_nerf_large.safetensors",
    "instant-nerf-base": "TencentARC/InstantMesh/instant_nerf_base.safetensors",
}


@lru_cache(maxsize=4)
def _cached_lock(path: Path) -> WeightsLock:
    return load_lock(path)


def default_lock() -> WeightsLock:
    """The repository's weights.lock, parsed once per process."""
    return _cached_lock(DEFAULT_LOCK_PATH)


def artifacts_for(profile: str, lock: WeightsLock | None = None) -> list[Artifact]:
    return (lock or default_lock()).for_profile(profile)


def sha256_for(path: str, lock: WeightsLock | None = None) -> str:
    """The pinned sha256 of ``path`` (relative to the weights dir, e.g. ``rembg/u2netp.onnx``)."""
    artifact = (lock or default_lock()).by_path(path)
    if artifact.sha256 is None:
        raise WeightsMissing(f"weights.lock pins no sha256 for {path} yet; run `lift3d weights lock`")
    return artifact.sha256


def rembg_path(model: str) -> str:
    return f"rembg/{model}.onnx"


def profile_for(settings: EngineSettings) -> str:
    """The smallest profile that holds every file ``settings`` reads."""
    if settings.weights != "locked":
        return settings.weights  # "tiny" and "dummy" profiles carry the background model only
    # "fast" is the TripoSR pipeline's; every multiview configuration is in "quality".
    return "quality"


def engine_artifacts(settings: EngineSettings, lock: WeightsLock | None = None) -> list[Artifact]:
    """The lock entries an engine with ``settings`` reads from the weights directory."""
    lock = lock or default_lock()
    wanted = [rembg_path(settings.background.model)]
    if settings.weights == "locked":
        wanted += [a.path for a in lock.artifacts if a.path.startswith(ZERO123PLUS_DIR)]
        if settings.multiview.variant == "instantmesh":
            wanted.append(INSTANTMESH_UNET)
        wanted.append(RECONSTRUCT_FILES[settings.reconstruct.model])
    return [lock.by_path(path) for path in wanted]


def artifact_info(settings: EngineSettings, lock: WeightsLock | None = None) -> list[dict[str, Any]]:
    """Per file the engine reads: licence, pin and source (what ``/v1/info`` shows)."""
    rows = []
    for artifact in engine_artifacts(settings, lock):
        primary = artifact.source[0]
        rows.append(
            {
                "path": artifact.path,
                "stage": artifact.stage,
                "licence": artifact.licence,
                "status": artifact.status,
                "sha256": artifact.sha256,
                "revision": artifact.revision,
                "source": primary.describe(),
            }
        )
    return rows


def missing_files(settings: EngineSettings, lock: WeightsLock | None = None) -> list[Artifact]:
    """Artifacts ``settings`` needs that are absent from the weights dir (existence only, no hashing)."""
    weights_dir = settings.weights_path
    return [a for a in engine_artifacts(settings, lock) if not a.local_path(weights_dir).is_file()]


def pull_command(profile: str, weights_dir: Path | None = None) -> str:
    command = f"lift3d weights pull --profile {profile}"
    return command + (f" --weights-dir {weights_dir}" if weights_dir is not None else "")


def weights_missing(paths: list[str], profile: str, weights_dir: Path | None = None) -> WeightsMissing:
    """The error for absent weight files: what is missing, the command that fetches it, the way around it."""
    shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    where = f" in {weights_dir}" if weights_dir is not None else ""
    return WeightsMissing(
        f"weights missing{where}: {shown}. Run `{pull_command(profile)}` to fetch them "
        "(with LIFT3D_WEIGHTS_DIR set as for the server), "
        "or start with `--weights dummy` to try the server with random weights"
    )
