"""One setting sets every CPU thread pool: torch's, onnxruntime's and OpenMP/BLAS's, never above the cores."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lift3d import process
from lift3d.process import THREAD_ENV_VARS, apply_cpu_threads, default_cpu_threads, resolve_cpu_threads
from lift3d.settings import EngineSettings, load_settings
from pipeline.runtime import Runtime


@pytest.mark.parametrize(
    ("setting", "cores", "expected"),
    [(0, 1, 1), (0, 2, 1), (0, 16, 8), (0, 3, 1), (4, 16, 4), (64, 16, 16), (3, 2, 2), (-1, 8, 4)],
)
def test_the_setting_resolves_to_a_share_of_the_cores_and_never_more_than_them(setting, cores, expected):
    assert resolve_cpu_threads(setting, cores) == expected
    assert 1 <= default_cpu_threads(cores) <= cores


def test_the_default_follows_this_process_s_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    assert resolve_cpu_threads(0) == 3 and resolve_cpu_threads(100) == 6


def test_the_environment_variable_reaches_the_engine_settings():
    settings = load_settings({"LIFT3D_CPU_THREADS": "3"})
    assert settings.engine.cpu_threads == 3
    assert Runtime.from_settings(EngineSettings(device="cpu", cpu_threads=1)).cpu_threads == 1


def test_applying_sets_torch_and_the_openmp_blas_environment(monkeypatch):
    for name in THREAD_ENV_VARS:
        monkeypatch.setenv(name, "7")
    before = torch.get_num_threads()
    try:
        apply_cpu_threads(1)
        assert torch.get_num_threads() == 1
        assert {name: os.environ[name] for name in THREAD_ENV_VARS} == {name: "1" for name in THREAD_ENV_VARS}
    finally:
        torch.set_num_threads(before)


def test_prepare_process_applies_the_setting(monkeypatch):
    seen: list[int] = []
    monkeypatch.setattr(process, "apply_cpu_threads", seen.append)
    monkeypatch.setattr(process, "configure_logging", lambda level: None)
    monkeypatch.setattr(process, "go_offline", lambda: None)
    monkeypatch.setattr(process, "forbid_core_dumps", lambda: {})
    process.prepare_process(cpu_threads=1)
    assert seen == [1]


def test_the_cli_sets_the_openmp_environment_before_torch_loads(tmp_path):
    # A fresh interpreter: the CLI parses its settings, then torch loads with the threads set.
    script = (
        "import os, sys, types\n"
        "fake = types.ModuleType('server.main')\n"
        "fake.serve = lambda settings: print(os.environ['OMP_NUM_THREADS'], 'torch' in sys.modules) or 0\n"
        "sys.modules['server.main'] = fake\n"
        "from lift3d.entrypoints import cli\n"
        "sys.exit(cli.main(['serve', '--data-dir', sys.argv[1]]))\n"
    )
    env = {**os.environ, "LIFT3D_CPU_THREADS": "1", "PYTHONPATH": os.getcwd()}
    env.pop("OMP_NUM_THREADS", None)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "False"]  # set, and torch not loaded yet


def test_the_onnxruntime_session_gets_the_thread_count(u2netp_weights_dir):
    from models.background import load_session

    session = load_session(u2netp_weights_dir, "u2netp", prefer_cuda=False, threads=1)
    options = session.inner_session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
