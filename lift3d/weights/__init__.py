"""Pinned weights: the catalog (what each mode reads, where, under which licence, how to fetch it)
and the tooling that pulls, verifies and locks the files. Importing it is cheap: no torch, no network.
"""

from lift3d.weights.catalog import (
    Artifact,
    LockError,
    WeightsLock,
    artifact_info,
    artifacts_for,
    default_lock,
    engine_artifacts,
    missing_files,
    profile_for,
    pull_command,
    sha256_for,
    weights_missing,
)

__all__ = [
    "Artifact",
    "LockError",
    "WeightsLock",
    "artifact_info",
    "artifacts_for",
    "default_lock",
    "engine_artifacts",
    "missing_files",
    "profile_for",
    "pull_command",
    "sha256_for",
    "weights_missing",
]
