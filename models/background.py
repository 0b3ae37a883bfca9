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
from pathlib import Path
from typing import Any

from lift3d.errors import WeightsCorrupt, WeightsMissing
from lift3d.weights.catalog import LockError, pull_command, rembg_path, sha256_for, smallest_profile, weights_missing
from lift3d.weights.wheel_mirror import sha256_file

log = logging.getLogger("lift3d.models.background")


def model_file(weights_dir: Path, name: str) -> Path:
    """Where the weights layout keeps rembg model ``name`` (the folder rembg calls U2NET_HOME)."""
    return Path(weights_dir) / rembg_path(name)


def verify_model_file(weights_dir: Path, name: str) -> Path:
    """The model file, refused when missing or altered, before onnxruntime ever parses it."""
    path = model_file(weights_dir, name)
    if not path.is_file():
        raise weights_missing([rembg_path(name)], weights_dir)
    try:
        expected = sha256_for(rembg_path(name))
    except LockError:
        raise WeightsMissing(f"weights.lock pins no rembg model {name!r}: add it there first") from None
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsCorrupt(
            f"{path} has sha256 {actual}, expected {expected} for rembg model {name!r}; "
            f"delete it and run `{pull_command(smallest_profile([rembg_path(name)]), weights_dir)}`"
        )
    return path


def onnx_providers(prefer_cuda: bool = True) -> list[str]:
    """CUDA when this onnxruntime build offers it (onnxruntime-gpu), else CPU; always named explicitly."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if prefer_cuda and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if prefer_cuda:
        log.warning(
            "onnxruntime offers no CUDAExecutionProvider (providers: %s; the CUDA image installs onnxruntime-gpu): "
            "background removal runs on the CPU",
            ", ".join(available),
        )
    return ["CPUExecutionProvider"]


def _preload_cuda_libraries(onnxruntime: Any) -> None:
    """Make CUDA 13 and cuDNN 9 loadable for onnxruntime-gpu's CUDA provider.

    The provider links them by soname, and in the CUDA image they live in the torch wheels'
    nvidia packages, which the dynamic loader does not search. Importing torch loads its
    copies process-wide; ``preload_dlls`` (onnxruntime 1.21+) covers what torch left out.
    """
    import torch  # noqa: F401

    preload = getattr(onnxruntime, "preload_dlls", None)
    if preload is not None:
        preload(cuda=True, cudnn=True)


def session_provider(session: Any) -> str:
    """The provider a session actually runs on (onnxruntime drops CUDA itself when its libraries fail to load)."""
    return session.inner_session.get_providers()[0]


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


def load_session(weights_dir: Path, name: str, *, prefer_cuda: bool = True, threads: int | None = None) -> Any:
    """A resident rembg session for ``name`` on a sha256-verified local file.

    Raises ``WeightsMissing`` when the file is absent and ``WeightsCorrupt``
    when its digest differs from the pin; never downloads.
    """
    import onnxruntime

    path = verify_model_file(weights_dir, name)
    providers = onnx_providers(prefer_cuda)
    if providers[0] == "CUDAExecutionProvider":
        _preload_cuda_libraries(onnxruntime)
    session_class = _pinned_session_class(name, path)
    options = onnxruntime.SessionOptions()
    if threads is not None:
        # One job at a time per session: parallel operators, no parallel graph branches.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = session_class(name, options, providers=providers)
    provider = session_provider(session)
    if providers[0] != provider:
        log.warning("rembg %s: %s did not load, running on %s", name, providers[0], provider)
    log.info("rembg %s loaded from %s on %s", name, path, provider)
    return session
