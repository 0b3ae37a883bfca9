"""First start on a pod: missing weights are pulled (``--pull-missing``) while /readyz says
``pulling_weights``, or reported as ``weights_missing`` by a server that stays up.

The server is the real ``serve`` (fake model stages) over a lock of small files that
a fake hub on 127.0.0.1 serves slowly, so each phase can be watched.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import pytest

from lift3d.settings import EngineSettings, load_settings
from lift3d.weights.catalog import INSTANTMESH_UNET, ZERO123PLUS_DIR, reconstruct_path, rembg_path
from server.weights_gate import pull_argv, serve_hint, weights_step
from tests.support.fake_hub import FakeHub, FakeHubServer
from tests.support.lifecycle import ServerProcess, canary_image

# What the default locked configuration reads (engine_paths), as small files.
FILES = {
    rembg_path("u2netp"): b"rembg bytes " * 1000,
    f"{ZERO123PLUS_DIR}/unet/config.json": b'{"fake": true}',
    INSTANTMESH_UNET: b"unet bytes " * 2000,
    **{reconstruct_path(m): f"{m} bytes ".encode() * 3000 for m in EngineSettings().reconstruct.loaded_models},
}


def write_lock(path: Path, hub: FakeHub, *, delay: float) -> Path:
    entries = []
    for name, body in FILES.items():
        url = hub.add_file(name.replace("/", "_"), body, delay_seconds=delay)
        entries.append(
            f'[[artifact]]\npath = "{name}"\nstage = "background"\nprofiles = ["quality"]\nlicence = "MIT"\n'
            f'status = "verified"\nconvert = "none"\nsize = {len(body)}\nsha256 = "{hashlib.sha256(body).hexdigest()}"\n'
            f'[[artifact.source]]\nkind = "url"\nurl = "{url}"\n'
        )
    path.write_text("version = 1\n[profiles.quality]\n" + "\n".join(entries))
    return path


@pytest.fixture
def hub():  # type: ignore[no-untyped-def]
    with FakeHubServer() as fake:
        yield fake


def readyz(server: ServerProcess) -> tuple[int, str | None]:
    response = httpx.get(server.base_url + "/readyz", timeout=5)
    return response.status_code, response.json().get("detail")


def test_pull_missing_fetches_the_profile_then_turns_ready(tmp_path: Path, hub: FakeHub) -> None:
    lock = write_lock(tmp_path / "weights.lock", hub, delay=1.0)
    weights = tmp_path / "weights"
    server = ServerProcess(
        tmp_path / "data",
        weights_dir=weights,
        env={"LIFT3D_TEST_WEIGHTS_LOCK": str(lock)},
        args=["--weights", "locked", "--pull-missing"],
    ).start(ready=False)
    try:
        seen = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            state = readyz(server)
            if not seen or seen[-1] != state:
                seen.append(state)
            if state[0] == 200:
                break
            time.sleep(0.1)
        assert (503, "pulling_weights") in seen, (seen, server.log_tail())
        assert seen[-1] == (200, None), (seen, server.log_tail())
        assert [s for s in seen if s[0] == 503 and s[1] not in ("pulling_weights", "warming_up")] == []
        for name, body in FILES.items():
            assert (weights / name).read_bytes() == body
        log = server.log_tail(20000)
        assert f"pulling {len(FILES)} missing weight file(s) of profile 'quality'" in log
        assert "installed" in log and "weights of profile 'quality' in place" in log
    finally:
        assert server.stop() == 0


def test_missing_weights_keep_the_server_up_with_weights_missing(tmp_path: Path, hub: FakeHub) -> None:
    lock = write_lock(tmp_path / "weights.lock", hub, delay=0.0)
    server = ServerProcess(
        tmp_path / "data",
        weights_dir=tmp_path / "empty",
        env={"LIFT3D_TEST_WEIGHTS_LOCK": str(lock)},
        args=["--weights", "locked"],
    ).start(ready=False)
    try:
        deadline = time.monotonic() + 30
        while readyz(server) != (503, "weights_missing"):
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.1)
        time.sleep(1.0)
        assert server.process is not None and server.process.poll() is None  # no exit, no restart loop
        with server.client() as client:
            refused = server.submit(client, canary_image()[0])
        assert refused.status_code == 503 and refused.json()["code"] == "weights_missing"
        detail = refused.json()["detail"]
        assert "lift3d weights pull --profile quality" in detail and "lift3d serve --pull-missing" in detail
        assert "LIFT3D_PULL_MISSING=1" in detail and "--weights dummy" in detail
        assert hub.requests == []  # nothing was fetched without --pull-missing
    finally:
        assert server.stop() == 0


def test_a_failed_pull_names_the_command_that_works(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The real lock: quality holds unpinned entries, so every hint carries --allow-unverified."""
    settings = load_settings({"LIFT3D_WEIGHTS": "locked", "LIFT3D_WEIGHTS_DIR": str(tmp_path / "w")})
    assert "lift3d serve --pull-missing --allow-unverified" in serve_hint(settings, "quality")
    assert "LIFT3D_ALLOW_UNVERIFIED=1" in serve_hint(settings, "quality")
    step = weights_step(settings)
    assert step is not None
    with pytest.raises(Exception) as refused:
        step(lambda phase: None)
    message = refused.value.message  # type: ignore[attr-defined]
    assert "--profile quality" in message and "--allow-unverified" in message and "--pull-missing" in message

    pulling = load_settings(
        {"LIFT3D_WEIGHTS": "locked", "LIFT3D_WEIGHTS_DIR": str(tmp_path / "w"), "LIFT3D_PULL_MISSING": "1"}
    )
    argv = pull_argv(pulling, "quality")
    assert argv[-4:] == ["--profile", "quality", "--weights-dir", str(tmp_path / "w")]  # no --allow-unverified unless asked
    allowed = load_settings({"LIFT3D_WEIGHTS_DIR": str(tmp_path / "w"), "LIFT3D_ALLOW_UNVERIFIED": "1"})
    assert pull_argv(allowed, "quality")[-1] == "--allow-unverified"
    monkeypatch.setattr("server.weights_gate.subprocess.run", lambda *a, **k: type("Done", (), {"returncode": 1})())
    phases: list[str] = []
    with pytest.raises(Exception) as failed:
        weights_step(pulling)(phases.append)  # type: ignore[misc]
    assert phases == ["pulling_weights"]
    assert "add --allow-unverified (LIFT3D_ALLOW_UNVERIFIED=1)" in failed.value.message  # type: ignore[attr-defined]
    assert "lift3d weights pull --profile quality" in failed.value.message  # type: ignore[attr-defined]


def test_a_combination_no_lock_profile_holds_is_refused_not_a_crash(monkeypatch) -> None:
    """When no weights.lock profile holds every file (LockError), the server still starts and refuses."""
    from types import SimpleNamespace

    import lift3d.weights as weights
    from lift3d.errors import WeightsMissing
    from lift3d.settings import load_settings
    from lift3d.weights import LockError
    from server.weights_gate import weights_step

    def no_profile(*args, **kwargs):
        raise LockError("no profile holds every file this configuration reads")

    monkeypatch.setattr(weights, "missing_files", lambda engine: [SimpleNamespace(path="rembg/u2net.onnx")])
    monkeypatch.setattr(weights, "profile_for", no_profile)
    step = weights_step(load_settings(engine__weights="locked"))
    assert step is not None
    with pytest.raises(WeightsMissing, match="no profile holds"):
        step(lambda phase: None)
