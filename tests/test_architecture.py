"""The floors: entry points > server > pipeline > models > foundation, checked by import-linter.

The contract lives in pyproject.toml ([tool.importlinter]). The second test proves the
check bites: the same contract on a copy of the tree with one upward import must fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO

PACKAGES = ("lift3d", "models", "pipeline", "server", "benchmarks")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]
    command += ["--config", str(root / "pyproject.toml"), "--no-cache"]
    return subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(root)})


def copy_tree(destination: Path) -> None:
    shutil.copy(REPO / "pyproject.toml", destination / "pyproject.toml")
    for package in PACKAGES:
        shutil.copytree(REPO / package, destination / package, ignore=shutil.ignore_patterns("__pycache__", "results", "node_modules"))


def test_no_import_crosses_a_floor_upward(tmp_path: Path) -> None:
    copy_tree(tmp_path)
    result = lint_imports(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    copy_tree(tmp_path)
    # A lazy import inside a function counts as much as one at the top of a module.
    target = tmp_path / "models" / "isosurface" / "__init__.py"
    target.write_text(target.read_text() + "\n\ndef _upward():\n    from pipeline import engine  # noqa: F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "models.isosurface -> pipeline.engine" in result.stdout, result.stdout
