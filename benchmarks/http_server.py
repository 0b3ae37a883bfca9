"""Start ``lift3d serve`` in a subprocess for a benchmark, wait until it is ready, stop it cleanly."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import REPO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerOptions:
    weights: str = "dummy"
    device: str = "auto"
    weights_dir: str | None = None
    queue_size: int | None = None
    # Extra LIFT3D_* variables for the server (e.g. LIFT3D_STEPS=28).
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 600.0


class ServerProcess:
    """``lift3d serve`` on a free local port with a fresh API key and a throw-away data dir."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = secrets.token_urlsafe(24)
        self._workdir = tempfile.TemporaryDirectory(prefix="lift3d-bench-")
        self.log_path = Path(self._workdir.name) / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        self.exit_code: int | None = None

    def command(self) -> list[str]:
        command = [
            sys.executable, "-m", "lift3d.entrypoints.cli", "serve",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--weights", self.options.weights, "--device", self.options.device,
            "--data-dir", str(Path(self._workdir.name) / "data"),
        ]
        if self.options.weights_dir:
            command += ["--weights-dir", self.options.weights_dir]
        return command

    def environment(self) -> dict[str, str]:
        env = {**os.environ, **self.options.env, "LIFT3D_API_KEYS": self.api_key}
        if self.options.queue_size is not None:
            env["LIFT3D_QUEUE_SIZE"] = str(self.options.queue_size)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def start(self) -> None:
        started = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=REPO, env=self.environment(), stdout=log, stderr=subprocess.STDOUT
            )
        deadline = started + self.options.startup_timeout_s
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            while time.perf_counter() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    if client.get("/readyz").status_code == 200:
                        self.startup_s = time.perf_counter() - started
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
        tail = self.log_tail()
        self.stop()
        raise TimeoutError(f"the server was not ready within {self.options.startup_timeout_s:.0f} s:\n{tail}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM (the server drains: nothing is running by now), then SIGKILL if it hangs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            self.exit_code = self.process.returncode
        self._workdir.cleanup()

    def __enter__(self) -> "ServerProcess":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
