"""The RunPod worker through the SDK's local API server (``--rp_serve_api`` on 127.0.0.1):
``/run``, then ``/status`` to COMPLETED with ``return_views``, the results stored in moto's S3
(the configured result store) and fetched through their presigned URLs. Also: SDK flags
forwarded by ``lift3d runpod-worker``, views inline and in the store, and the SDK log redacted."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from lift3d.entrypoints.runpod_worker import make_handler, redact, sdk_flags_problem
from lift3d.settings import load_settings
from server.results_s3 import S3ResultStore
from tests.support.lifecycle import canary_image, free_port
from tests.support.moto_s3 import MotoS3, moto_fixture
from tests.support.paths import REPO


@pytest.fixture(scope="module")
def moto(tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from moto_fixture(tmp_path_factory)


def worker_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "LIFT3D_", "BUCKET_", "AWS_"))}
    env.update(
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="2",
        LIFT3D_WEIGHTS="tiny",
        LIFT3D_DEVICE="cpu",
        **extra,
    )
    return env


def test_run_then_status_through_the_sdk_api_server(moto: MotoS3, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "worker.log"
    env = worker_env(
        {**moto.env(), "LIFT3D_RESULTS": f"s3://{moto.bucket}/runpod", "LIFT3D_RESULTS_ENCRYPTION": "provider"}
    )
    command = [sys.executable, "-m", "tests.support.runpod_fake_worker", "--device", "cpu",
               "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(base + "/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        image, needles = canary_image()
        image_b64 = base64.b64encode(image).decode()
        job = {"input": {"image_base64": image_b64, "options": {"steps": 2, "seed": 5, "return_views": True}}}
        accepted = httpx.post(base + "/run", json=job, timeout=30).json()
        assert accepted["status"] == "IN_PROGRESS", accepted
        done = httpx.post(f"{base}/status/{accepted['id']}", timeout=120).json()
        assert done["status"] == "COMPLETED", done
        output = done["output"]
        assert output["seed"] == 5 and output["options"]["return_views"] is True
        assert "glb_base64" not in output and "views_base64" not in output
        glb = httpx.get(output["glb_url"])  # presigned: a plain client, no credentials
        views = httpx.get(output["views_url"])
        assert glb.status_code == 200 and glb.content[:4] == b"glTF" and len(glb.content) == output["glb_bytes"]
        assert views.content[:8] == b"\x89PNG\r\n\x1a\n" and len(views.content) == output["views_bytes"]
        stored = moto.objects(f"runpod/{output['result_id']}/")
        assert stored == {
            f"runpod/{output['result_id']}/model.glb": glb.content,
            f"runpod/{output['result_id']}/views.png": views.content,
        }
    finally:
        process.terminate()
        process.wait(30)
    log = log_path.read_text()
    assert "Starting API server" in log or "Uvicorn running" in log
    signature = output["glb_url"].split("X-Amz-Signature=")[1].split("&")[0]
    assert "X-Amz-Signature=<redacted>" in log  # the SDK printed the output, through the redaction
    assert signature not in log and image_b64[:80] not in log  # nothing secret or bulky in the log
    assert not any(needle.decode(errors="ignore") in log for needle in needles[:1])


def test_unknown_sdk_flags_are_refused_and_known_ones_forwarded(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import lift3d.entrypoints.runpod_worker as worker
    from lift3d.entrypoints.cli import main

    assert sdk_flags_problem(["--rp_serve_api", "--rp_api_port", "8123", "--test_input", '{"input": {}}']) is None
    assert "--rp_sever_api" in (sdk_flags_problem(["--rp_sever_api"]) or "")
    seen: dict[str, Any] = {}
    monkeypatch.setattr(worker, "start", lambda settings, sdk_args=None: seen.setdefault("args", sdk_args) and 0)
    flags = ["--rp_serve_api", "--rp_api_host", "127.0.0.1", "--test_input", '{"input": {"image_url": "x"}}',
             "--rp_log_level", "INFO", "--rp_debugger", "--rp_api_concurrency", "1"]
    main(["runpod-worker", "--weights", "tiny", *flags])
    assert seen["args"] == flags
    with pytest.raises(SystemExit):
        main(["serve", "--rp_serve_api"])  # only the worker takes SDK flags
    assert worker.start.__name__ == "<lambda>"
    monkeypatch.undo()
    assert worker.start(load_settings({}), ["--no_such_flag"]) == 2


@pytest.mark.parametrize("mode", ["inline", "store-provider", "store-client"])
def test_return_views_goes_where_the_glb_goes(mode: str, moto: MotoS3) -> None:
    from tests.entrypoints.test_runpod_worker import FakeResult

    class ViewsEngine:
        def run(self, data: bytes, options: Any, progress: Any = None) -> Any:
            result = FakeResult(b"glTF" + b"\x01" * 60)
            result.previews = {"views": b"\x89PNG views"} if options.return_views else {}  # type: ignore[attr-defined]
            result.options = {"return_views": options.return_views}
            return result

    store = None
    if mode != "inline":
        from server.results import KeyRing, generate_key_text

        ring = KeyRing([base64.b64decode(generate_key_text())]) if mode == "store-client" else None
        store = S3ResultStore(moto.client(), moto.bucket, f"views-{mode}", ring=ring)
    handler = make_handler(ViewsEngine(), load_settings({}), bucket=None, send_progress=lambda *a: None, store=store)
    image = base64.b64encode(b"img").decode()
    output = handler({"id": "job-7", "input": {"image_base64": image, "options": {"return_views": True}}})
    assert output["views_bytes"] == len(b"\x89PNG views")
    if mode == "inline":
        assert base64.b64decode(output["views_base64"]) == b"\x89PNG views"
    elif mode == "store-provider":
        assert httpx.get(output["views_url"]).content == b"\x89PNG views"
        assert httpx.get(output["glb_url"]).content[:4] == b"glTF"
    else:
        assert "views_url" not in output and output["views_key"] == f"views-{mode}/job-7/views.png.enc"
        raw = moto.objects(f"views-{mode}/")[output["views_key"]]
        assert b"PNG" not in raw and store.get("job-7", "views.png") == b"\x89PNG views"  # type: ignore[union-attr]
    without = handler({"id": "job-8", "input": {"image_base64": image}})
    assert not any(key.startswith("views") for key in without)


def test_an_unreachable_store_fails_the_job_retryably(tmp_path: Path) -> None:
    from tests.entrypoints.test_runpod_worker import FakeEngine

    dead = MotoS3(tmp_path)  # never started
    store = S3ResultStore(dead.client(), dead.bucket, "x", ring=None)
    handler = make_handler(FakeEngine(b"glTF" + b"\x00" * 8), load_settings({}), bucket=None,
                           send_progress=lambda *a: None, store=store)
    output = handler({"id": "j", "input": {"image_base64": base64.b64encode(b"img").decode()}})
    assert output["error"].startswith("storage_unavailable:") and output["refresh_worker"] is False


def test_redaction_keeps_sizes_and_drops_payloads_and_signatures() -> None:
    payload = base64.b64encode(os.urandom(3000)).decode()
    line = redact(f"Job result: {{'glb_base64': '{payload}', 'glb_url': 'https://b/k?X-Amz-Credential=AKIA%2F&X-Amz-Signature=abc123'}}")
    assert payload[:64] not in line and f"<{len(payload)} chars redacted>" in line
    assert "abc123" not in line and "AKIA" not in line and "X-Amz-Signature=<redacted>" in line
    assert redact("job abc progress {'stage': 'multiview'}") == "job abc progress {'stage': 'multiview'}"
