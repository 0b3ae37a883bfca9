"""What every benchmark shares: the environment record, input photos, statistics, results files.

A results file must say exactly what produced it (device, driver, library versions,
commit, command, date) so a number copied into the README can be traced back.
Paths of the machine that ran it are redacted to repo-relative form.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif"}
SCHEMA_VERSION = 1

# Packages whose versions change the numbers; recorded in every results file.
TRACKED_PACKAGES = (
    "torch",
    "diffusers",
    "transformers",
    "onnxruntime",
    "onnxruntime-gpu",
    "rembg",
    "numpy",
    "litestar",
    "uvicorn",
    "nvidia-ml-py",
)


def default_images_dir() -> Path:
    """``../shared/images`` next to the repository (override the parent with LIFT3D_SHARED_DIR)."""
    shared = Path(os.environ.get("LIFT3D_SHARED_DIR", REPO.parent / "shared"))
    return shared / "images"


def list_images(folder: Path, count: int) -> list[Path]:
    """``count`` photos from ``folder`` in name order, cycling when the folder holds fewer."""
    if not folder.is_dir():
        raise SystemExit(f"image folder not found: {redact(str(folder))} (pass --images DIR)")
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not photos:
        raise SystemExit(f"no .png/.jpg/.webp images in {redact(str(folder))}")
    return [photos[i % len(photos)] for i in range(count)]


def sniff_content_type(data: bytes) -> str:
    """The image MIME type from magic bytes (file names lie: a PNG may be called .jpg)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return "application/octet-stream"


def summarize(values: Iterable[float]) -> dict[str, float | int | None]:
    """n, mean, min, max and the percentiles the reports use (linear interpolation)."""
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        return {"n": 0, "mean": None, "min": None, "max": None, "median": None, "p90": None, "p95": None}
    p50, p90, p95 = np.percentile(array, [50, 90, 95])
    return {
        "n": int(array.size),
        "mean": float(array.mean()),
        "min": float(array.min()),
        "max": float(array.max()),
        "median": float(p50),
        "p90": float(p90),
        "p95": float(p95),
    }


def redact(text: str) -> str:
    """Replace this machine's repository, its parent and the home folder with portable names."""
    replacements = [(str(REPO), "."), (str(REPO.parent), ".."), (str(Path.home()), "~")]
    for absolute, portable in replacements:
        if absolute and absolute != "/":
            text = text.replace(absolute, portable)
    return text


SECRET_FLAGS = {"--api-key"}
_SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD")


def is_secret_name(name: str) -> bool:
    return any(word in name.upper() for word in _SECRET_WORDS)


def redact_secrets(argv: Sequence[str]) -> list[str]:
    """A command line safe to commit: API keys and ``SECRET_NAME=value`` pairs become ``***``."""
    safe: list[str] = []
    hide_next = False
    for arg in argv:
        name, sep, _ = arg.partition("=")
        if hide_next:
            safe.append("***")
        elif sep and name in SECRET_FLAGS:
            safe.append(f"{name}=***")
        elif sep and not name.startswith("-") and is_secret_name(name):
            safe.append(f"{name}=***")
        else:
            safe.append(arg)
        hide_next = arg in SECRET_FLAGS
    return safe


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _git(*args: str) -> str | None:
    try:
        completed = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip()


def git_state() -> dict[str, Any]:
    # Where the tree has no git (a copy sent to the GPU machine), scripts/gpu_check.sh compares the
    # files with the commit the kit was stamped at and passes the outcome in LIFT3D_GIT_* variables.
    commit = _git("rev-parse", "HEAD")
    if commit is None and os.environ.get("LIFT3D_GIT_COMMIT"):
        return {
            "commit": os.environ["LIFT3D_GIT_COMMIT"],
            "branch": os.environ.get("LIFT3D_GIT_BRANCH") or None,
            "dirty": os.environ.get("LIFT3D_GIT_DIRTY", "").lower() in {"1", "true", "yes"},
            "from": "source stamp (no git in this copy of the tree; files compared with the commit)",
        }
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit,
        "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
        # Tracked files edited since the commit: the numbers may not be the commit's.
        "dirty": bool(status) if status is not None else None,
    }


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how busy the (shared) machine was."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvidia_driver_version() -> str | None:
    """The kernel driver version, from NVML when installed, else from nvidia-smi."""
    try:
        import pynvml  # nvidia-ml-py; optional

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
            return version.decode() if isinstance(version, bytes) else str(version)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - absent library or driver: try the CLI
        pass
    try:
        completed = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )
        return completed.stdout.strip().splitlines()[0] or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def cuda_version_text(version: int) -> str:
    """NVML/CUDA's integer form (13000, 12040) as ``13.0``, ``12.4``."""
    return f"{version // 1000}.{version % 1000 // 10}"


def nvidia_cuda_driver_version() -> str | None:
    """The newest CUDA the installed driver supports (nvidia-smi's "CUDA Version"), not torch's runtime."""
    try:
        import pynvml  # nvidia-ml-py; optional

        pynvml.nvmlInit()
        try:
            return cuda_version_text(int(pynvml.nvmlSystemGetCudaDriverVersion()))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - absent library or driver: try the CLI
        pass
    try:
        completed = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return cuda_version_from_smi(completed.stdout)


def cuda_version_from_smi(text: str) -> str | None:
    """The ``CUDA Version: 13.0`` of nvidia-smi's banner."""
    found = re.search(r"CUDA Version:\s*([0-9]+\.[0-9]+)", text)
    return found.group(1) if found else None


def device_info(device: str) -> dict[str, Any]:
    """What ran the models: GPU name, memory, capability and driver, or the CPU model."""
    import torch

    info: dict[str, Any] = {
        "type": "cpu",
        "name": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_runtime": torch.version.cuda,
        "driver": None,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        info.update(
            type="cuda",
            name=props.name,
            host_cpu=cpu_model(),
            memory_total_bytes=int(props.total_memory),
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            driver=nvidia_driver_version(),
            cuda_driver=nvidia_cuda_driver_version(),
            cudnn=torch.backends.cudnn.version(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        )
    return info


def device_slug(info: dict[str, Any]) -> str:
    """A short file-name-safe device name: ``h100-80gb-hbm3``, ``cpu``."""
    if info["type"] == "cpu":
        return "cpu"
    name = str(info["name"]).lower().replace("nvidia", "").strip()
    return "-".join("".join(ch if ch.isalnum() else " " for ch in name).split()) or "cuda"


def capture_environment(argv: Sequence[str], device: str) -> dict[str, Any]:
    """Device, driver, versions, commit, command line and UTC date of this run."""
    return {
        "date_utc": utc_now().isoformat(timespec="seconds"),
        "command": redact(shlex.join([Path(sys.executable).name, *redact_secrets(argv)])),
        "device": device_info(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": package_versions(),
        "git": git_state(),
    }


def results_stem(kind: str, weights: str, slug: str, *, smoke: bool, when: dt.datetime) -> str:
    """``pipeline-dummy-h100-80gb-hbm3-20261122T1520Z``; smoke runs start with ``smoke-`` (git-ignored)."""
    stem = f"{kind}-{weights}-{slug}-{when.strftime('%Y%m%dT%H%MZ')}"
    return f"smoke-{stem}" if smoke else stem


def write_results(payload: dict[str, Any], markdown: str, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` side by side; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    md_path = out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path
