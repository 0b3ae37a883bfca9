"""Fake engines and server helpers for the server tests.

The fake engine keeps the real decode stage (so uploads are really validated and
dropped) and replaces the model stages with a timed stand-in that checks
cancellation often, plus a finish stage that emits a small valid GLB. Queue,
overload, privacy and SIGTERM tests then do not depend on model speed.

Run as a script it serves the fake engine, for subprocess tests::

    python -m tests.support.servers --seconds-per-step 0.1
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from tests.support.paths import REPO

from lift3d.settings import Settings, load_settings
from pipeline.decode import DecodeStage
from pipeline.engine import Engine
from pipeline.runtime import Runtime
from pipeline.stage import StageContext
from pipeline.state import JobState


def box_glb() -> bytes:
    import trimesh

    return trimesh.creation.box(extents=(1.0, 0.5, 0.25)).export(file_type="glb")


def small_png(color: tuple[int, int, int] = (200, 60, 30), size: int = 64) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


class TimedStage:
    """Stands in for the model stages: ``seconds_per_step`` per diffusion step, cancellable at each.

    The job's ``steps`` option sets how long it runs (warm-up uses 2 steps). ``gate``,
    when given, holds the stage at its first step until set, so a test can keep a
    job running exactly as long as it needs.
    """

    name = "multiview"
    progress_weight = 0.9

    def __init__(self, seconds_per_step: float = 0.02, gate: threading.Event | None = None) -> None:
        self.seconds_per_step = seconds_per_step
        self.gate = gate
        self.calls = 0

    def load(self, runtime: Runtime) -> None:
        pass

    def run(self, job: JobState, ctx: StageContext) -> None:
        self.calls += 1
        assert job.image is not None, "decode must run first"
        job.views_grid = job.image
        steps = job.options.steps
        for step in range(steps):
            while self.gate is not None and not self.gate.is_set():
                ctx.check_cancelled()
                time.sleep(0.01)
            ctx.check_cancelled()
            time.sleep(self.seconds_per_step)
            ctx.report(step + 1, steps, "step")


class BoxFinishStage:
    """A valid GLB (a box) and QA numbers; views.png when asked."""

    name = "finish"
    progress_weight = 0.09

    def __init__(self) -> None:
        self._glb = box_glb()

    def load(self, runtime: Runtime) -> None:
        pass

    def run(self, job: JobState, ctx: StageContext) -> None:
        ctx.check_cancelled()
        job.glb = self._glb
        job.qa = {"vertices": 8, "faces": 12, "watertight": True, "texture_size": job.options.texture_size}
        if job.options.return_views:
            job.previews["views"] = small_png((10, 200, 10))


class FailingStage:
    """Raises a typed engine error, as a model stage would on bad input."""

    name = "reconstruct"
    progress_weight = 0.1

    def __init__(self, error: Exception) -> None:
        self.error = error

    def load(self, runtime: Runtime) -> None:
        pass

    def run(self, job: JobState, ctx: StageContext) -> None:
        raise self.error


class GatedWarmupEngine(Engine):
    """An engine whose warm-up waits for ``warm_gate`` (to observe /readyz before warm-up)."""

    def __init__(self, settings: Any, stages: Iterable[Any], warm_gate: threading.Event) -> None:
        super().__init__(settings, stages)
        self.warm_gate = warm_gate

    def warmup(self):  # noqa: ANN201
        self.warm_gate.wait(30)
        return super().warmup()


def fake_engine(
    settings: Settings, *stages: Any, seconds_per_step: float = 0.02, gate: threading.Event | None = None
) -> Engine:
    chosen = list(stages) or [TimedStage(seconds_per_step, gate=gate), BoxFinishStage()]
    return Engine(settings.engine, [DecodeStage(), *chosen])


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "storage__data_dir": str(data_dir),
        "server__api_keys": ["test-key-1", "test-key-2"],
        "engine__device": "cpu",
        "engine__weights": "tiny",
        "server__sse_keepalive_seconds": 0.5,
        "server__shutdown_grace_seconds": 5.0,
    }
    base.update(overrides)
    return load_settings({}, **base)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05) -> Any:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def wait_for_http(base_url: str, path: str = "/readyz", timeout: float = 120.0, process: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"server exited early with {process.returncode}")
        try:
            if httpx.get(base_url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{base_url}{path} not 200 within {timeout}s")


def subprocess_env(extra: dict[str, str]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LIFT3D_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def fake_server_env(api_key: str, data_dir: Path | str, port: int | str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a tiny-weights, CPU server subprocess on ``port`` (plus ``extra``)."""
    return subprocess_env(
        {
            "LIFT3D_API_KEYS": api_key,
            "LIFT3D_DATA_DIR": str(data_dir),
            "LIFT3D_PORT": str(port),
            "LIFT3D_DEVICE": "cpu",
            "LIFT3D_WEIGHTS": "tiny",
            **(extra or {}),
        }
    )


def start_fake_server(log_path: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    """``python -m tests.support.servers`` (this module's ``main``) in a subprocess, logging to ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.servers", *args],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop_server(process: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM (the server drains), then SIGKILL after ``timeout``; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="serve lift3d with a fake engine (tests only)")
    parser.add_argument("--seconds-per-step", type=float, default=0.05)
    parser.add_argument("--full-disk-flag", type=Path, help="the data disk acts full while this file exists")
    args = parser.parse_args(argv)
    from server.main import serve

    if args.full_disk_flag is not None:
        from tests.support.faults import install_file_switch

        install_file_switch(args.full_disk_flag)

    settings = load_settings()
    return serve(settings, fake_engine(settings, seconds_per_step=args.seconds_per_step))


if __name__ == "__main__":
    sys.exit(main())
