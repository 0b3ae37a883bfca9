"""The weights catalog: the one place that knows where each weight file lives, which
profile fetches it, and which command to tell a user who lacks it.

- paths: :func:`rembg_path`, :data:`ZERO123PLUS_DIR`, :data:`INSTANTMESH_UNET`,
  :func:`reconstruct_path` (relative to the weights directory, as weights.lock names them);
- ``default_lock()`` / ``artifacts_for(profile)``: the lock (parsed once) and a profile's files;
- ``sha256_for(path)``: the pinned digest of one file (the rembg loader checks it);
- ``engine_artifacts(settings)`` / ``profile_for(settings)``: what an engine configuration
  reads, and the smallest profile that fetches all of it;
- ``artifact_info(settings)``: licence, revision and source per file, for ``/v1/info``;
- ``pipeline_paths(pipeline, settings)`` / ``licence_report(pipeline, settings)``: the files one
  pipeline's models stand for, with licence and commercial use (job results, GLB extras, ``/v1/info``);
- ``missing_files(settings)`` / ``weights_missing(paths)``: a cheap presence check and the
  error (naming the exact command to run) that loaders and ``serve`` raise.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from lift3d.errors import WeightsMissing
from lift3d.settings import EngineSettings
from lift3d.weights.lock import DEFAULT_LOCK_PATH, Artifact, LockError, WeightsLock, load_lock

__all__ = [
    "Artifact",
    "INSTANTMESH_UNET",
    "LockError",
    "TRIPOSR_CHECKPOINT",
    "TRIPOSR_CONFIG",
    "WeightsLock",
    "ZERO123PLUS_DIR",
    "artifact_info",
    "artifacts_for",
    "default_lock",
    "engine_artifacts",
    "is_commercial",
    "licence_report",
    "missing_files",
    "pipeline_paths",
    "profile_for",
    "pull_command",
    "pull_hint",
    "reconstruct_path",
    "rembg_path",
    "sha256_for",
    "weights_missing",
]

# -- the weights directory's layout (docs/weights.md) -------------------------------------

ZERO123PLUS_DIR = "sudo-ai/zero123plus-v1.2"
INSTANTMESH_UNET = "TencentARC/InstantMesh/diffusion_pytorch_model.safetensors"
INSTANTMESH_DIR = "TencentARC/InstantMesh"
TRIPOSR_CHECKPOINT = "stabilityai/TripoSR/model.safetensors"
TRIPOSR_CONFIG = "stabilityai/TripoSR/config.yaml"

# The profiles a user is told to pull, smallest first.
PROFILES_BY_SIZE = ("tiny", "fast", "quality", "all")


def rembg_path(model: str) -> str:
    """Where rembg model ``model`` lives (the folder rembg would call U2NET_HOME)."""
    return f"rembg/{model}.onnx"


def reconstruct_path(preset: str) -> str:
    """The converted checkpoint of an InstantMesh preset (``instant-nerf-large`` ->
    ``TencentARC/InstantMesh/instant_nerf_large.safetensors``)."""
    return f"{INSTANTMESH_DIR}/{preset.replace('-', '_')}.safetensors"


# -- the lock ------------------------------------------------------------------------------


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


# -- what a configuration reads --------------------------------------------------------------


def pipeline_paths(pipeline: str, settings: EngineSettings, lock: WeightsLock | None = None) -> list[str]:
    """The weight files one pipeline's real models read, whatever the weights mode (its licence report)."""
    wanted = [rembg_path(settings.background.model)]
    if pipeline == "fast":
        return wanted + [TRIPOSR_CHECKPOINT, TRIPOSR_CONFIG]
    lock = lock or default_lock()
    wanted += [a.path for a in lock.artifacts if a.path.startswith(ZERO123PLUS_DIR + "/")]
    if settings.multiview.variant == "instantmesh":
        wanted.append(INSTANTMESH_UNET)
    wanted += [reconstruct_path(model) for model in settings.reconstruct.loaded_models]
    return wanted


def engine_paths(settings: EngineSettings, lock: WeightsLock | None = None) -> list[str]:
    """The weight files (weights-dir relative) an engine with ``settings`` reads: those of its profile's pipelines."""
    wanted = [rembg_path(settings.background.model)]
    if settings.weights == "locked":
        for pipeline in settings.pipelines:
            wanted += [path for path in pipeline_paths(pipeline, settings, lock) if path not in wanted]
    return wanted


def is_commercial(licence: str) -> bool:
    """False for a NonCommercial licence (CC-BY-NC-*): a company may not earn money with such a file."""
    return "-NC" not in licence.upper()


def licence_report(pipeline: str, settings: EngineSettings, lock: WeightsLock | None = None) -> list[dict[str, Any]]:
    """Per artifact a pipeline uses: its licence, whether it allows commercial use, and how it is used.

    In ``tiny``/``dummy`` mode only the background model's file may be read (where it is
    present); the other artifacts are named still (their architecture runs, with random
    weights) so the report says which real files a locked server would need.
    """
    lock = lock or default_lock()
    background = rembg_path(settings.background.model)
    rows = []
    for path in pipeline_paths(pipeline, settings, lock):
        artifact = lock.by_path(path)
        if settings.weights == "locked":
            use = "weights"
        elif path == background:
            # tiny/dummy use the real background model where its file is there, else a heuristic.
            present = artifact.local_path(settings.weights_path).is_file()
            use = "weights" if present else f"not used ({settings.weights} mode without the file: border-colour heuristic)"
        else:
            use = f"architecture only ({settings.weights} weights)"
        rows.append(
            {
                "path": path,
                "stage": artifact.stage,
                "licence": artifact.licence,
                "commercial_use": is_commercial(artifact.licence),
                "use": use,
            }
        )
    return rows


def engine_artifacts(settings: EngineSettings, lock: WeightsLock | None = None) -> list[Artifact]:
    """The lock entries an engine with ``settings`` reads from the weights directory."""
    lock = lock or default_lock()
    return [lock.by_path(path) for path in engine_paths(settings, lock)]


def smallest_profile(paths: Iterable[str], lock: WeightsLock | None = None) -> str:
    """The smallest profile that fetches every one of ``paths`` (files, or folders such as ZERO123PLUS_DIR)."""
    lock = lock or default_lock()
    wanted = set(paths)
    candidates = [p for p in PROFILES_BY_SIZE if p in lock.profiles] + [p for p in lock.profiles if p not in PROFILES_BY_SIZE]
    for profile in candidates:
        held = [a.path for a in lock.for_profile(profile)]
        if all(any(h == path or h.startswith(path.rstrip("/") + "/") for h in held) for path in wanted):
            return profile
    raise LockError(f"no weights profile fetches all of {sorted(wanted)}")


def profile_for(settings: EngineSettings, lock: WeightsLock | None = None) -> str:
    """The profile this configuration runs: ``tiny``/``dummy`` name themselves, locked mode the
    smallest profile that holds every file it reads."""
    if settings.weights != "locked":
        return settings.weights
    return smallest_profile(engine_paths(settings, lock), lock)


def artifact_info(settings: EngineSettings, lock: WeightsLock | None = None) -> list[dict[str, Any]]:
    """Per file the engine reads: licence, pin and source (what ``/v1/info`` shows)."""
    rows = []
    for artifact in engine_artifacts(settings, lock):
        rows.append(
            {
                "path": artifact.path,
                "stage": artifact.stage,
                "licence": artifact.licence,
                "status": artifact.status,
                "sha256": artifact.sha256,
                "revision": artifact.revision,
                "source": artifact.source[0].describe(),
            }
        )
    return rows


# -- what to tell a user who lacks them -------------------------------------------------------


def missing_files(settings: EngineSettings, lock: WeightsLock | None = None) -> list[Artifact]:
    """Artifacts ``settings`` needs that are absent from the weights dir (existence only, no hashing)."""
    weights_dir = settings.weights_path
    return [a for a in engine_artifacts(settings, lock) if not a.local_path(weights_dir).is_file()]


def pull_command(profile: str, weights_dir: Path | None = None, lock: WeightsLock | None = None) -> str:
    """The exact command that fetches ``profile``, flags included."""
    command = f"lift3d weights pull --profile {profile}"
    if weights_dir is not None:
        command += f" --weights-dir {weights_dir}"
    if any(not a.verified for a in artifacts_for(profile, lock)):
        # Until `lift3d weights lock` pins them, these files can only be fetched knowingly.
        command += " --allow-unverified"
    return command


def pull_hint(
    paths: list[str], weights_dir: Path | None = None, *, profile: str | None = None, lock: WeightsLock | None = None
) -> str:
    """What to tell a user who lacks ``paths``: the exact command, and the way around it."""
    try:
        command = pull_command(profile or smallest_profile(paths, lock), weights_dir, lock)
    except LockError:
        command = "lift3d weights pull --profile quality --allow-unverified"
    return f"run `{command}` to fetch them, or start with `--weights dummy` to try the server with random weights"


def weights_missing(
    paths: list[str], weights_dir: Path | None = None, *, profile: str | None = None, lock: WeightsLock | None = None
) -> WeightsMissing:
    """The error for absent weight files: what is missing, the command that fetches it, the way around it."""
    shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    where = f" in {weights_dir}" if weights_dir is not None else ""
    return WeightsMissing(f"weights missing{where}: {shown}; " + pull_hint(paths, weights_dir, profile=profile, lock=lock))
