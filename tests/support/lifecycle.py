"""Run the real lift3d server in a subprocess for the data-lifecycle acceptance tests.

Two engines, the same server, worker and storage:

* ``tiny``: ``lift3d serve --weights tiny --device cpu`` with the real stages (few
  steps, small texture). About a minute in all on a quiet 2-core CPU.
* ``fake``: this file run as the server, the model stages replaced by a timed
  stand-in (0.5 s per step, cancellable) that emits a box GLB. The storage layer
  under test is identical; only the model work is skipped, so timing-sensitive
  paths (cancel, SIGKILL mid-job) are deterministic.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.paths import REPO

API_KEY = "lifecycle-test-key"

ENGINES = ["fake", "tiny"]


def weights_dir_for(engine: str, request: pytest.FixtureRequest) -> Path | None:
    """The rembg weights the real stages need (the fake engine needs none)."""
    return request.getfixturevalue("u2netp_weights_dir") if engine == "tiny" else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def canary_image(size: int = 96) -> tuple[bytes, list[bytes]]:
    """A PNG carrying unique markers, and the byte strings that would betray it on disk.

    Markers: a text chunk, the compressed PNG stream, and a row of random pixels
    (as raw RGB, which is how a decoded image would look if it were dumped).
    """
    import numpy as np
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo

    marker = f"lift3d-canary-{uuid.uuid4().hex}"
    rng = np.random.default_rng(int(uuid.uuid4().int % 2**32))
    image = Image.new("RGB", (size, size), (255, 255, 255))
    ImageDraw.Draw(image).ellipse((size // 5, size // 5, size - size // 5, size - size // 5), fill=(200, 80, 40))
    pixels = np.asarray(image).copy()
    noise_row = rng.integers(0, 256, size=(size // 2, 3), dtype=np.uint8)
    pixels[size // 2, size // 4 : size // 4 + size // 2] = noise_row
    info = PngInfo()
    info.add_text("Comment", marker)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info)
    data = buffer.getvalue()
    middle = len(data) // 2
    return data, [marker.encode(), data[middle : middle + 48], noise_row.tobytes()]


def find_canaries(folder: Path, needles: list[bytes]) -> list[str]:
    """Every file under ``folder`` that contains any needle."""
    hits = []
    for path in folder.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            hits.extend(f"{path.relative_to(folder)}: {needle[:24]!r}" for needle in needles if needle in blob)
    return hits


def data_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@dataclass
class ServerProcess:
    """One lift3d server process over a data directory; start, stop (SIGTERM) or kill (SIGKILL)."""

    data_dir: Path
    engine: str = "fake"
    env: dict[str, str] = field(default_factory=dict)
    weights_dir: Path | None = None
    port: int = 0
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    # Extra `lift3d serve` flags (the fake engine's server parses them the same way).
    args: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 240.0, *, ready: bool = True) -> "ServerProcess":
        """Start and wait for /readyz 200 (or, with ``ready=False``, only for /healthz: the process answers)."""
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFT3D_")}
        env.update(
            PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
            PYTHONUNBUFFERED="1",
            OMP_NUM_THREADS="2",
            LIFT3D_API_KEYS=API_KEY,
            LIFT3D_DATA_DIR=str(self.data_dir),
            LIFT3D_PORT=str(self.port),
            LIFT3D_HOST="127.0.0.1",
            LIFT3D_DEVICE="cpu",
            LIFT3D_WEIGHTS="tiny",
            LIFT3D_STEPS="2",
            LIFT3D_GRID_RESOLUTION="32",
            LIFT3D_SHUTDOWN_GRACE_SECONDS="5",
        )
        if self.weights_dir is not None:
            env["LIFT3D_WEIGHTS_DIR"] = str(self.weights_dir)
        env.update(self.env)
        if self.engine == "fake":
            command = [sys.executable, "-m", "tests.support.lifecycle"]
        else:
            command = [sys.executable, "-m", "lift3d.entrypoints.cli", "serve", "--weights", "tiny", "--device", "cpu"]
        command += self.args
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + ("/readyz" if ready else "/healthz"), timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise AssertionError(f"server not ready within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 60.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    # -- API helpers ---------------------------------------------------------

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)

    def submit(self, client: httpx.Client, image: bytes, **params: Any) -> httpx.Response:
        # Small texture and mesh: the real finishing stage is most of a tiny job's time.
        query = {"remove_background": "off", "seed": 1, "steps": 2, "texture_size": 512, "target_faces": 2000, **params}
        return client.post(
            "/v1/jobs",
            content=image,
            headers={"Content-Type": "image/png"},
            params={k: str(v).lower() if isinstance(v, bool) else v for k, v in query.items()},
        )

    def wait_for(self, client: httpx.Client, job_id: str, statuses: set[str], timeout: float = 180.0) -> dict:
        deadline = time.monotonic() + timeout
        view: dict = {}
        while time.monotonic() < deadline:
            view = client.get(f"/v1/jobs/{job_id}").json()
            if view.get("status") in statuses:
                return view
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} not in {statuses} within {timeout}s: {view}\n{self.log_tail()}")


class StandInStages:
    """The model stages of the fake engine: 0.5 s per step, cancellable, a box GLB (and views if asked)."""

    name = "multiview"
    progress_weight = 0.9

    def load(self, runtime: object) -> None:
        import trimesh

        self.glb = trimesh.creation.box(extents=(1.0, 0.5, 0.25)).export(file_type="glb")

    def run(self, job: Any, ctx: Any) -> None:
        steps = job.options.steps
        for step in range(steps):
            ctx.check_cancelled()
            time.sleep(0.5)
            ctx.report(step + 1, steps, "step")
        job.glb = self.glb
        job.qa = {"vertices": 8, "faces": 12, "watertight": True}
        if job.options.return_views:
            from PIL import Image

            buffer = io.BytesIO()
            Image.new("RGB", (64, 96), (10, 200, 10)).save(buffer, format="PNG")
            job.previews["views"] = buffer.getvalue()


def fake_engine(settings: Any) -> Any:
    from pipeline.decode import DecodeStage
    from pipeline.engine import Engine

    return Engine(settings.engine, [DecodeStage(), StandInStages()])


def _serve_fake_engine() -> int:
    """The server with stand-in model stages (``StandInStages``)."""
    from lift3d.entrypoints.cli import _settings_from, build_parser
    from server.main import serve

    test_lock = os.environ.get("LIFT3D_TEST_WEIGHTS_LOCK")
    if test_lock:  # the pod tests' own lock, whose files a fake hub serves
        from lift3d.weights import catalog

        catalog.DEFAULT_LOCK_PATH = Path(test_lock)
    settings = _settings_from(build_parser().parse_args(["serve", *sys.argv[1:]]))
    return serve(settings, fake_engine(settings), check_weights=bool(test_lock))


if __name__ == "__main__":
    sys.exit(_serve_fake_engine())
