"""`lift3d weights verify`: re-hash every file a profile needs and say what each one is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lift3d.weights.installed import Manifest, sha256_of
from lift3d.weights.lock import Artifact, WeightsLock

State = Literal["ok", "missing", "corrupt", "unverified", "unknown-origin"]


@dataclass(frozen=True)
class FileCheck:
    artifact: Artifact
    state: State
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def check_artifact(artifact: Artifact, weights_dir: Path, manifest: Manifest) -> FileCheck:
    path = artifact.local_path(weights_dir)
    if not path.is_file():
        return FileCheck(artifact, "missing", "run `lift3d weights pull`")
    actual = sha256_of(path, progress=True)
    if artifact.convert == "none":
        if artifact.sha256 is None:
            return FileCheck(artifact, "unverified", f"sha256 {actual} is not pinned in weights.lock")
        if actual != artifact.sha256:
            return FileCheck(artifact, "corrupt", f"sha256 {actual[:16]}…, expected {artifact.sha256[:16]}…")
        return FileCheck(artifact, "ok")
    # A converted file is checked against the digest recorded when pull made it from the pinned bytes.
    entry = manifest.get(artifact)
    if entry is None:
        return FileCheck(artifact, "unknown-origin", "not installed by `lift3d weights pull`; pull it again")
    if actual != entry.sha256:
        return FileCheck(artifact, "corrupt", "changed since `pull` converted it")
    if artifact.sha256 is None:
        return FileCheck(artifact, "unverified", f"converted from unpinned bytes (sha256 {entry.source_sha256})")
    if entry.source_sha256 != artifact.sha256:
        return FileCheck(artifact, "corrupt", "converted from other bytes than weights.lock pins")
    return FileCheck(artifact, "ok")


def verify_profile(lock: WeightsLock, profile: str, weights_dir: Path) -> list[FileCheck]:
    weights_dir = Path(weights_dir).expanduser()
    manifest = Manifest(weights_dir)
    return [check_artifact(artifact, weights_dir, manifest) for artifact in lock.for_profile(profile)]


def format_table(checks: list[FileCheck]) -> str:
    rows = [("STATUS", "LICENCE", "LOCK", "FILE", "DETAIL")]
    rows += [(c.state, c.artifact.licence, c.artifact.status, c.artifact.path, c.detail) for c in checks]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4] for row in rows]
    return "\n".join(line.rstrip() for line in lines)
