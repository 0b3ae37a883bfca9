"""`lift3d weights pull`: fetch, check, convert and install a profile's artifacts.

Per artifact: skip it when the manifest says the installed file is current;
refuse it when the lock cannot pin its bytes (unless allowed); otherwise try its
sources in order (primary, then mirrors), check size and sha256 of what arrived,
convert it to safetensors where the lock says so, and move it into place. A file
only ever appears at its final path complete and checked.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from lift3d.weights.convert import to_safetensors
from lift3d.weights.installed import Manifest, sha256_of, state_dir
from lift3d.weights.lock import Artifact, Source, WeightsLock
from lift3d.weights.sources import fetch
from lift3d.errors import WeightsCorrupt, WeightsMissing

log = logging.getLogger("lift3d.weights.pull")

SourceChoice = Literal["auto", "primary", "mirror"]
Action = Literal["present", "installed", "refused", "failed"]


@dataclass(frozen=True)
class PullOutcome:
    artifact: Artifact
    action: Action
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.action in ("present", "installed")


def pick_sources(artifact: Artifact, choice: SourceChoice) -> list[Source]:
    if choice == "primary":
        return artifact.source[:1]
    if choice == "mirror":
        return artifact.source[1:]
    return list(artifact.source)


def pull_profile(
    lock: WeightsLock,
    profile: str,
    weights_dir: Path,
    *,
    allow_unverified: bool = False,
    sources: SourceChoice = "auto",
    hub_endpoint: str | None = None,
    echo: Callable[[str], None] = print,
) -> list[PullOutcome]:
    weights_dir = Path(weights_dir).expanduser()
    manifest = Manifest(weights_dir)
    outcomes = []
    for artifact in lock.for_profile(profile):
        outcome = pull_artifact(
            artifact,
            weights_dir,
            manifest,
            allow_unverified=allow_unverified,
            sources=sources,
            hub_endpoint=hub_endpoint,
            echo=echo,
        )
        echo(f"{outcome.action:>9}  {artifact.path}" + (f"  ({outcome.detail})" if outcome.detail else ""))
        outcomes.append(outcome)
    return outcomes


def pull_artifact(
    artifact: Artifact,
    weights_dir: Path,
    manifest: Manifest,
    *,
    allow_unverified: bool = False,
    sources: SourceChoice = "auto",
    hub_endpoint: str | None = None,
    echo: Callable[[str], None] = print,
) -> PullOutcome:
    final = artifact.local_path(weights_dir)
    if manifest.is_current(artifact, final) or _adopt_existing(artifact, final, manifest):
        return PullOutcome(artifact, "present")
    if not artifact.verified and not allow_unverified:
        return PullOutcome(
            artifact,
            "refused",
            f"unresolved {', '.join(artifact.unresolved)}: run `lift3d weights lock` where the sources are "
            "reachable, or pass --allow-unverified to take unpinned bytes",
        )
    staging = state_dir(weights_dir) / "staging"
    errors = []
    for source in pick_sources(artifact, sources):
        try:
            staged = fetch(artifact, source, staging, allow_unverified=allow_unverified, hub_endpoint=hub_endpoint)
            source_sha256 = _check(artifact, staged)
        except (WeightsMissing, WeightsCorrupt) as error:  # SourceUnavailable included: try the next source
            message = error.message
            if not message.startswith(source.describe()):
                message = f"{source.describe()}: {message}"
            echo(f"  {message}")
            errors.append(message)
            continue
        try:
            installed_sha256 = _install(artifact, staged, final, source_sha256)
        except WeightsCorrupt as error:
            # The pinned bytes arrived but cannot be converted: another source would serve the same bytes.
            staged.unlink(missing_ok=True)
            return PullOutcome(artifact, "failed", f"{source.describe()}: {error.message}")
        manifest.record(
            artifact, final, source_sha256=source_sha256, sha256=installed_sha256, source=source.describe()
        )
        detail = f"from {source.describe()}"
        if artifact.sha256 is None:
            detail += f"; UNVERIFIED, sha256 {source_sha256}: pin it with `lift3d weights lock`"
        return PullOutcome(artifact, "installed", detail)
    if not errors:
        errors.append(f"no source left to try with --source {sources}")
    return PullOutcome(artifact, "failed", "; ".join(errors))


def _check(artifact: Artifact, staged: Path) -> str:
    """The sha256 of the staged file, or WeightsCorrupt (and the file removed) when it is not the pinned one."""
    size = staged.stat().st_size
    if artifact.size is not None and size != artifact.size:
        staged.unlink(missing_ok=True)
        raise WeightsCorrupt(f"size {size} B, expected {artifact.size} B; refused and removed")
    actual = sha256_of(staged, progress=True)
    if artifact.sha256 is not None and actual != artifact.sha256:
        staged.unlink(missing_ok=True)
        raise WeightsCorrupt(f"sha256 {actual}, expected {artifact.sha256}; refused and removed")
    return actual


def _install(artifact: Artifact, staged: Path, final: Path, source_sha256: str) -> str:
    """Move (or convert) the checked file into place; the installed file's sha256."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if artifact.convert == "none":
        os.replace(staged, final)
        return source_sha256
    to_safetensors(staged, final, artifact.convert)
    # The pickle is no longer needed: the server only reads the safetensors.
    staged.unlink(missing_ok=True)
    return sha256_of(final)


def _adopt_existing(artifact: Artifact, final: Path, manifest: Manifest) -> bool:
    """A file put there by hand (or by an older pull) is fine when its bytes are the pinned ones."""
    if artifact.convert != "none" or artifact.sha256 is None or not final.is_file():
        return False
    if final.stat().st_size != artifact.size or sha256_of(final, progress=True) != artifact.sha256:
        return False
    manifest.record(artifact, final, source_sha256=artifact.sha256, sha256=artifact.sha256, source="existing file")
    return True
