"""The offline GPU kit's dependency closure against the GPU machine's package list.

Without a downloaded kit the check runs on this venv's installed metadata of the very
versions the kit pins (the same Requires-Dist the wheels carry); with ``.gpukit/`` built
(``scripts/gpu_kit.sh``) it runs on the wheels themselves, their tags and the size cap.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO, shared_path

pytestmark = pytest.mark.shared

KIT_DIR = REPO / ".gpukit"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


gpukit = _load("gpukit")


@pytest.fixture(scope="module")
def target():
    return gpukit.read_target(shared_path("gpu", "target-packages.txt"))


@pytest.fixture(scope="module")
def lock() -> dict[str, str]:
    return gpukit.read_lock()


@pytest.fixture(scope="module")
def installed_kit(lock: dict[str, str]) -> dict[str, object]:
    """The kit's packages as this venv has them: the venv is installed from the same lock."""
    kit = {}
    for name, version in gpukit.kit_pins(lock).items():
        dist = gpukit.installed_dist(name)
        assert dist.version == version, f"the venv has {name} {dist.version}, the lock pins {version}: run make install"
        kit[name] = dist
    return kit


def test_target_list_is_read_with_versions_and_python(target) -> None:
    assert target.python.startswith("3.12.")
    assert target.packages["torch"] == "2.11.0" and target.packages["transformers"] == "5.17.0"
    assert "absl-py" in target.packages and target.packages["absl-py"] is None  # first line, after "Packages:"
    assert target.environment()["python_version"] == "3.12"


def test_kit_closure_on_the_pinned_metadata(installed_kit, target, lock) -> None:
    report = gpukit.verify(installed_kit, target, lock)
    assert report.problems == []
    # Requirements met by a machine package without a recorded version are listed for the run there.
    assert "scipy" in report.unversioned


def test_checker_finds_a_missing_a_shadowing_and_a_too_old_package(installed_kit, target, lock) -> None:
    without_cffi = {name: dist for name, dist in installed_kit.items() if name != "cffi"}
    problems = gpukit.check_closure(without_cffi, target).problems
    assert any("cryptography" in p and "cffi" in p and "neither in the kit nor on the machine" in p for p in problems)

    shadowing = {**installed_kit, "numpy": gpukit.Dist("numpy", "2.4.6", ())}
    assert any("would shadow" in p for p in gpukit.check_closure(shadowing, target).problems)

    # transformers 5.17 on the machine needs huggingface-hub < 2: a kit wanting hub 2 must be refused.
    demanding = dataclasses.replace(installed_kit["diffusers"], requires=("huggingface-hub>=2.0",))
    problems = gpukit.check_closure({**installed_kit, "diffusers": demanding}, target).problems
    assert any("huggingface-hub>=2.0" in p and "the machine has 1.33.0" in p for p in problems)


def test_extras_and_markers_are_followed() -> None:
    target = gpukit.Target({"numpy": "2.5.2"}, "3.12.3")
    kit = {
        "a": gpukit.Dist("a", "1", ("b[fast]", "c; python_version < '3.11'", "d; extra == 'docs'")),
        "b": gpukit.Dist("b", "1", ("e; extra == 'fast'", "numpy>=2")),
    }
    problems = gpukit.check_closure(kit, target).problems
    # c is for old Pythons and d for an extra nobody asked for; b's "fast" extra needs e.
    assert problems == ["b 1 needs e; extra == \"fast\": neither in the kit nor on the machine"]
    too_new = gpukit.check_closure({"a": gpukit.Dist("a", "1", (), ">=3.13")}, target).problems
    assert too_new == ["a 1 needs Python >=3.13, the machine has 3.12.3"]


def test_every_runtime_dependency_is_carried_or_kept_with_a_reason(target, lock) -> None:
    assert gpukit.check_dependencies_covered(target) == []
    kept = {row["package"]: row for row in gpukit.decisions(target, lock)}
    assert kept["torch"]["target"] == "2.11.0" and kept["torch"]["pin"] == lock["torch"]
    assert kept["transformers"]["target"] == "5.17.0"


def test_wheel_tags_must_fit_cpython_312_manylinux(target) -> None:
    good = Path("msgspec-0.22.0-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl")
    pure = Path("trimesh-5.2.0-py3-none-any.whl")
    abi3 = Path("cryptography-50.0.2-cp311-abi3-manylinux_2_28_x86_64.whl")
    assert gpukit.check_tags([good, pure, abi3], target) == []
    wrong = [Path("xatlas-0.0.11-cp311-cp311-manylinux_2_17_x86_64.whl"), Path("rpds_py-1-cp312-cp312-manylinux_2_34_x86_64.whl")]
    assert len(gpukit.check_tags(wrong, target)) == 2
    twice = gpukit.check_tags([pure, Path("trimesh-5.1.0-py3-none-any.whl")], target)
    assert twice and "twice" in twice[0]


@pytest.mark.skipif(not (KIT_DIR / "wheels").is_dir(), reason="no .gpukit/ here: scripts/gpu_kit.sh builds it")
def test_built_kit_wheels_are_closed_and_under_the_cap(target, lock) -> None:
    wheels = sorted((KIT_DIR / "wheels").glob("*.whl"))
    kit = {dist.name: dist for dist in map(gpukit.wheel_dist, wheels)}
    report = gpukit.verify(kit, target, lock)
    assert report.problems + gpukit.check_tags(wheels, target) == []
    total = sum(path.stat().st_size for path in KIT_DIR.rglob("*") if path.is_file())
    assert total <= gpukit.KIT_LIMIT_BYTES
    assert (KIT_DIR / "weights" / "rembg" / "u2netp.onnx").stat().st_size == 4_574_861
    assert len(list((KIT_DIR / "images").iterdir())) >= 2
