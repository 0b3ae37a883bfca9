"""What `pull` installed: a small manifest in ``<weights dir>/.lift3d/installed.json``.

A converted file (safetensors made from a .ckpt) has no upstream digest of its
own, so the manifest records which upstream bytes it came from and its own
digest. It also lets `pull` skip files it already checked (same size and
mtime) without re-hashing gigabytes, which is what makes `pull` cheap to repeat.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import msgspec

from lift3d.weights.lock import Artifact

STATE_DIR = ".lift3d"
MANIFEST_NAME = "installed.json"


class InstalledFile(msgspec.Struct, forbid_unknown_fields=True):
    source_sha256: str  # digest of the bytes as the source served them (what the lock pins)
    sha256: str  # digest of the installed file (differs from source_sha256 after a conversion)
    size: int
    mtime_ns: int
    source: str  # which source delivered it
    verified: bool  # False when pulled with --allow-unverified and nothing to check against


def state_dir(weights_dir: Path) -> Path:
    return Path(weights_dir) / STATE_DIR


def sha256_of(path: Path, progress: bool = False) -> str:
    """Streaming sha256 (a tqdm bar for big files when asked)."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    bar = None
    if progress and size > 64 << 20:
        from tqdm import tqdm

        bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", leave=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return digest.hexdigest()


class Manifest:
    def __init__(self, weights_dir: Path) -> None:
        self.path = state_dir(weights_dir) / MANIFEST_NAME
        self.entries: dict[str, InstalledFile] = {}
        if self.path.is_file():
            try:
                self.entries = msgspec.json.decode(self.path.read_bytes(), type=dict[str, InstalledFile])
            except msgspec.DecodeError:
                # A damaged manifest only costs re-hashing: every file is checked again.
                self.entries = {}

    def get(self, artifact: Artifact) -> InstalledFile | None:
        return self.entries.get(artifact.path)

    def record(self, artifact: Artifact, installed: Path, *, source_sha256: str, sha256: str, source: str) -> None:
        stat = installed.stat()
        self.entries[artifact.path] = InstalledFile(
            source_sha256=source_sha256,
            sha256=sha256,
            size=stat.st_size,
            mtime_ns=stat.st_mtime_ns,
            source=source,
            verified=artifact.sha256 is not None,
        )
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".json.partial")
        partial.write_bytes(msgspec.json.format(msgspec.json.encode(self.entries), indent=2))
        os.replace(partial, self.path)

    def is_current(self, artifact: Artifact, installed: Path) -> bool:
        """The file is the one we installed for this lock entry, untouched since (no hashing)."""
        entry = self.get(artifact)
        if entry is None or not installed.is_file():
            return False
        if artifact.sha256 is not None and entry.source_sha256 != artifact.sha256:
            return False
        stat = installed.stat()
        return entry.size == stat.st_size and entry.mtime_ns == stat.st_mtime_ns
