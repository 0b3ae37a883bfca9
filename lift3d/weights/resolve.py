"""`lift3d weights lock`: fill in what weights.lock does not know yet, like `uv lock`.

Run where the sources are reachable. For each unresolved artifact:
- a Hugging Face source without a revision gets the repository's current commit
  (one commit per repository, so a model folder is never mixed across revisions);
- size and sha256 come from the Hub's LFS metadata at that commit, or, for small
  non-LFS files (configs), from hashing the downloaded bytes;
- a digest already in the lock is never overwritten: a different upstream digest
  is an error to investigate, not an update.
The file is rewritten with tomlkit, so comments and layout survive.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import tomlkit

from lift3d.weights.installed import sha256_of
from lift3d.weights.lock import Artifact, HubSource, LockError, UrlSource, WeightsLock, load_lock, parse_lock
from lift3d.weights.sources import fetch_url


@dataclass
class Resolution:
    sha256: str
    size: int
    status: str  # "pinned" (digest from the Hub's LFS pointer) or "verified" (we hashed the bytes)
    revision: str | None = None


@dataclass(frozen=True)
class _Hub:
    token: str | None
    endpoint: str | None


@dataclass
class HubIndex:
    """One repository at one commit: its files' sizes and LFS digests."""

    revision: str
    files: dict[str, Any] = field(default_factory=dict)


def resolve_lock(
    path: Path, *, token: str | None = None, endpoint: str | None = None, echo: Callable[[str], None] = print
) -> tuple[WeightsLock, int]:
    """Resolve every unresolved artifact and rewrite ``path``; the new lock and the count resolved."""
    lock = load_lock(path)
    indexes: dict[str, HubIndex] = {}
    resolutions: dict[str, Resolution] = {}
    for artifact in lock.artifacts:
        if artifact.verified:
            continue
        resolution = _resolve(artifact, indexes, _Hub(token, endpoint))
        echo(f"resolved {artifact.path}: {resolution.status} sha256 {resolution.sha256[:16]}… {resolution.size} B")
        resolutions[artifact.path] = resolution
    if not resolutions:
        echo("weights.lock: nothing to resolve")
        return lock, 0
    text = rewrite(path.read_text(encoding="utf-8"), resolutions)
    new_lock = parse_lock(text, origin=str(path))
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return new_lock, len(resolutions)


def _resolve(artifact: Artifact, indexes: dict[str, HubIndex], hub_access: _Hub) -> Resolution:
    hub = artifact.hub_source
    if hub is not None:
        index = indexes.get(hub.repo)
        if index is None or (hub.revision and index.revision != hub.revision):
            index = indexes[hub.repo] = _hub_index(hub, hub_access)
        resolution = _resolve_hub_file(hub, index, hub_access)
    else:
        url = next(s for s in artifact.source if isinstance(s, UrlSource))
        with tempfile.TemporaryDirectory(prefix="lift3d-lock-") as folder:
            downloaded = fetch_url(url.url, Path(folder) / "file")
            resolution = Resolution(sha256_of(downloaded), downloaded.stat().st_size, "verified")
    if artifact.sha256 is not None and artifact.sha256 != resolution.sha256:
        raise LockError(
            f"{artifact.path}: upstream now serves sha256 {resolution.sha256}, but weights.lock pins "
            f"{artifact.sha256}; refusing to change a pin (check the upstream, then edit the entry by hand)"
        )
    return resolution


def _hub_index(hub: HubSource, access: _Hub) -> HubIndex:
    from huggingface_hub import HfApi

    info = HfApi(endpoint=access.endpoint, token=access.token).model_info(hub.repo, revision=hub.revision or "main", files_metadata=True)
    return HubIndex(revision=info.sha, files={s.rfilename: s for s in info.siblings or []})


def _resolve_hub_file(hub: HubSource, index: HubIndex, access: _Hub) -> Resolution:
    from huggingface_hub import hf_hub_download

    sibling = index.files.get(hub.file)
    if sibling is None:
        raise LockError(f"{hub.repo}@{index.revision} has no file {hub.file!r}")
    if sibling.lfs is not None:
        return Resolution(sibling.lfs.sha256, sibling.lfs.size, "pinned", index.revision)
    # A small git-stored file: its blob id is a sha1 of a git header plus the bytes, so hash the bytes.
    with tempfile.TemporaryDirectory(prefix="lift3d-lock-") as folder:
        local = Path(
            hf_hub_download(
                hub.repo,
                hub.file,
                revision=index.revision,
                local_dir=folder,
                token=access.token,
                endpoint=access.endpoint,
            )
        )
        return Resolution(sha256_of(local), local.stat().st_size, "verified", index.revision)


def rewrite(text: str, resolutions: dict[str, Resolution]) -> str:
    """``text`` (weights.lock) with the resolved entries filled in, comments kept."""
    document = tomlkit.parse(text)
    for table in document["artifact"]:  # type: ignore[union-attr]
        resolution = resolutions.get(str(table["path"]))
        if resolution is None:
            continue
        for stale in ("unresolved", "revision_hint", "size_hint"):
            if stale in table:
                del table[stale]
        table["size"] = resolution.size
        table["sha256"] = resolution.sha256
        table["status"] = resolution.status
        for source in table["source"]:
            if source["kind"] == "hf" and resolution.revision is not None:
                source["revision"] = resolution.revision
    return tomlkit.dumps(document)
