"""RunPod serverless worker: input parsing, progress, output shaping, and one real job in tiny mode
through the RunPod SDK's local test mode (`--test_input`), its GLB uploaded to a fake S3 on 127.0.0.1."""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from lift3d.entrypoints.runpod_worker import (
    BucketConfig,
    JobInput,
    ThrottledProgress,
    image_bytes,
    make_handler,
    parse_input,
)
from lift3d.settings import load_settings
from lift3d.errors import InputError, InvalidOption, UploadTooLarge
from pipeline.events import ProgressEvent
from pipeline.options import JobOptions
from tests.support.paths import REPO, shared_path


@dataclass
class FakeStore:
    """Path -> bytes; PUT stores (an S3 PutObject in path style), GET serves (presigned query ignored)."""

    objects: dict[str, bytes] = field(default_factory=dict)
    puts: list[dict[str, str]] = field(default_factory=list)
    url: str = ""


class FakeStoreServer:
    def __init__(self) -> None:
        store = self.store = FakeStore()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_PUT(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                path = self.path.split("?")[0]
                store.objects[path] = body
                store.puts.append({"path": path, "authorization": self.headers.get("Authorization", "")})
                self.send_response(200)
                self.send_header("ETag", '"fake"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                body = store.objects.get(self.path.split("?")[0])
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        store.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeStore:
        self._thread.start()
        return self.store

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def store():  # type: ignore[no-untyped-def]
    with FakeStoreServer() as fake:
        yield fake


def test_input_needs_exactly_one_image_and_known_fields() -> None:
    assert parse_input({"image_url": "https://example.com/a.png"}).image_url == "https://example.com/a.png"
    with pytest.raises(InputError, match="exactly one"):
        parse_input({})
    with pytest.raises(InputError, match="exactly one"):
        parse_input({"image_url": "https://x/a.png", "image_base64": "AAAA"})
    with pytest.raises(InputError, match="colour"):
        parse_input({"image_url": "https://x/a.png", "colour": "red"})
    with pytest.raises(InputError, match="texture"):
        parse_input({"image_url": "https://x/a.png", "options": {"texture": "hologram"}})
    parsed = parse_input({"image_base64": "AAAA", "options": {"seed": 7, "steps": 10}})
    assert parsed.options == JobOptions(seed=7, steps=10)


def test_image_bytes_from_base64_and_data_url_with_limits() -> None:
    raw = b"\x89PNG fake bytes"
    encoded = base64.b64encode(raw).decode()
    assert image_bytes(JobInput(image_base64=encoded), 1000) == raw
    assert image_bytes(JobInput(image_base64=f"data:image/png;base64,{encoded}"), 1000) == raw
    with pytest.raises(InputError, match="not valid base64"):
        image_bytes(JobInput(image_base64="@@@"), 1000)
    with pytest.raises(UploadTooLarge):
        image_bytes(JobInput(image_base64=base64.b64encode(b"x" * 2000).decode()), 1000)
    with pytest.raises(InputError, match="http"):
        image_bytes(JobInput(image_url="file:///etc/passwd"), 1000)


def test_image_url_is_fetched_with_a_size_cap(store: FakeStore) -> None:
    store.objects["/img.png"] = b"p" * 5000
    # The fake store listens on loopback: only an allow-list entry lets the worker reach it.
    allow = (f"{store.url}/",)
    assert image_bytes(JobInput(image_url=f"{store.url}/img.png"), 10_000, allow) == b"p" * 5000
    with pytest.raises(UploadTooLarge):
        image_bytes(JobInput(image_url=f"{store.url}/img.png"), 1000, allow)
    with pytest.raises(InputError, match="404"):
        image_bytes(JobInput(image_url=f"{store.url}/missing.png"), 1000, allow)


def test_image_url_on_loopback_is_refused_without_an_allow_list_entry(store: FakeStore) -> None:
    store.objects["/img.png"] = b"p" * 50
    for url in (f"{store.url}/img.png", store.url.replace("127.0.0.1", "localhost") + "/img.png"):
        with pytest.raises(InputError) as info:
            image_bytes(JobInput(image_url=url), 10_000)
        assert info.value.code == "image_url_not_allowed"
    with pytest.raises(InputError) as info:
        image_bytes(JobInput(image_url=f"{store.url}/img.png"), 10_000, (f"{store.url}/other/",))
    assert info.value.code == "image_url_not_allowed"


def test_progress_is_throttled_but_every_stage_change_goes_out() -> None:
    sent: list[dict[str, Any]] = []
    progress = ThrottledProgress(sent.append, interval_s=3600)
    for step in range(5):
        progress(ProgressEvent("multiview", step, 5, 0.1 + step * 0.1))
    progress(ProgressEvent("reconstruct", 0, 1, 0.7, "started"))
    assert [(u["stage"], u["step"]) for u in sent] == [("multiview", 0), ("reconstruct", 0)]
    assert sent[1]["progress"] == 0.7


@dataclass
class FakeResult:
    glb: bytes
    seed: int = 3
    weights_mode: str = "tiny"
    options: Any = field(default_factory=lambda: {"seed": 3})
    timings: dict[str, float] = field(default_factory=lambda: {"finish": 0.1})
    qa: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(
        default_factory=lambda: {
            "pipeline": "fast",
            "artifacts": [
                {"path": "stabilityai/TripoSR/model.safetensors", "licence": "MIT", "commercial_use": True},
                {"path": "rembg/u2netp.onnx", "licence": "Apache-2.0", "commercial_use": True},
            ],
        }
    )


class FakeEngine:
    """Stands in for the engine where only the handler's input/output shaping is under test."""

    def __init__(self, glb: bytes) -> None:
        self.glb = glb
        self.calls: list[tuple[bytes, JobOptions]] = []

    def run(self, data: bytes, options: JobOptions, progress: Any = None) -> FakeResult:
        self.calls.append((data, options))
        if options.steps == 0:
            raise InvalidOption("steps must be between 1 and 200, got 0", code="invalid_steps")
        progress(ProgressEvent("finish", 1, 1, 1.0))
        return FakeResult(self.glb)


def test_handler_returns_inline_base64_or_refuses_when_too_large() -> None:
    settings = load_settings({})
    updates: list[dict[str, Any]] = []
    engine = FakeEngine(b"glTF" + b"\x00" * 96)
    handler = make_handler(engine, settings, bucket=None, send_progress=lambda job, u: updates.append(u))
    image = base64.b64encode(b"img").decode()
    output = handler({"id": "j1", "input": {"image_base64": image, "options": {"seed": 3}}})
    assert base64.b64decode(output["glb_base64"]) == engine.glb
    assert output["seed"] == 3 and output["weights_mode"] == "tiny" and output["glb_bytes"] == 100
    # The licence report in brief.
    assert output["pipeline"] == "fast" and output["licences"] == ["Apache-2.0", "MIT"] and output["commercial_use"]
    assert engine.calls[0] == (b"img", JobOptions(seed=3))
    assert updates and updates[-1]["stage"] == "finish"
    small = make_handler(engine, settings, bucket=None, send_progress=lambda *a: None, max_inline_bytes=50)
    refused = small({"id": "j2", "input": {"image_base64": image}})
    assert refused["error"].startswith("result_too_large") and "BUCKET_ENDPOINT_URL" in refused["error"]
    invalid = handler({"id": "j3", "input": {"image_base64": image, "options": {"steps": 0}}})
    assert invalid["error"].startswith("invalid_steps:")


def test_handler_uploads_to_the_bucket_and_returns_a_presigned_url(store: FakeStore) -> None:
    bucket = BucketConfig.from_environ(
        {
            "BUCKET_ENDPOINT_URL": store.url,
            "BUCKET_ACCESS_KEY_ID": "AKIATEST",
            "BUCKET_SECRET_ACCESS_KEY": "secret",
            "BUCKET_NAME": "results",
        }
    )
    assert bucket is not None and BucketConfig.from_environ({"BUCKET_ENDPOINT_URL": store.url}) is None
    engine = FakeEngine(b"glTF" + bytes(range(256)) * 400)  # over boto's 25 KB multipart threshold in RunPod's helper
    handler = make_handler(engine, load_settings({}), bucket=bucket, send_progress=lambda *a: None)
    output = handler({"id": "job-42", "input": {"image_base64": base64.b64encode(b"img").decode()}})
    assert "glb_base64" not in output
    assert store.puts[0]["path"] == "/results/lift3d/job-42.glb"
    assert store.puts[0]["authorization"].startswith("AWS4-HMAC-SHA256")
    assert "X-Amz-Signature=" in output["glb_url"]
    assert httpx.get(output["glb_url"]).content == engine.glb


@pytest.mark.timeout(900)
def test_local_test_mode_turns_a_real_photo_into_a_valid_glb(
    store: FakeStore, u2netp_weights_dir: Path, tmp_path: Path
) -> None:
    from tests.support.gltf_validator import assert_valid_glb

    store.objects["/inputs/teapot.png"] = shared_path("images", "teapot.png").read_bytes()
    # Few diffusion steps and a coarse grid keep this real job (plus the worker's warm-up) quick on a CPU.
    options = {"seed": 1, "steps": 1, "texture_size": 512, "target_faces": 5000}
    job = {"input": {"image_url": f"{store.url}/inputs/teapot.png", "options": options}}
    env = dict(os.environ)
    for name in list(env):
        if name.startswith(("RUNPOD_", "LIFT3D_")):
            del env[name]
    env.update(
        LIFT3D_WEIGHTS="tiny",
        LIFT3D_DEVICE="cpu",
        LIFT3D_WEIGHTS_DIR=str(u2netp_weights_dir),
        LIFT3D_STEPS="1",
        LIFT3D_GRID_RESOLUTION="64",
        BUCKET_ENDPOINT_URL=store.url,
        BUCKET_ACCESS_KEY_ID="AKIATEST",
        BUCKET_SECRET_ACCESS_KEY="secret",
        BUCKET_NAME="results",
        LIFT3D_IMAGE_URL_ALLOWLIST=f"{store.url}/inputs/",
        OMP_NUM_THREADS="2",
    )
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "runpod_handler.py"), "--test_input", json.dumps(job)],
        cwd=tmp_path,  # the SDK would otherwise look for a test_input.json here
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    log = completed.stdout + completed.stderr
    assert completed.returncode == 0, log[-4000:]
    match = re.search(r"Job result: (\{.*\})", log)
    assert match, log[-2000:]
    output = ast.literal_eval(match.group(1))["output"]  # the SDK logs {"output": <handler's dict>}
    assert "X-Amz-Signature=<redacted>" in output["glb_url"]  # the SDK's log never holds a working link
    assert output["weights_mode"] == "tiny" and output["seed"] == 1
    assert [put["path"] for put in store.puts] == ["/results/lift3d/local_test.glb"]
    glb = httpx.get(output["glb_url"]).content
    assert glb == store.objects["/results/lift3d/local_test.glb"] and len(glb) == output["glb_bytes"]
    assert_valid_glb(glb)


def test_handler_types_cuda_out_of_memory_and_unexpected_failures(monkeypatch) -> None:
    import torch

    import lift3d.entrypoints.runpod_worker as worker_module

    freed: list[int] = []
    monkeypatch.setattr(worker_module, "free_gpu_cache", lambda: freed.append(1))

    class FailingEngine(FakeEngine):
        def __init__(self, error: Exception) -> None:
            super().__init__(b"")
            self.error = error

        def run(self, data: bytes, options: JobOptions, progress: Any = None) -> FakeResult:
            raise self.error

    image = base64.b64encode(b"img").decode()
    oom = make_handler(FailingEngine(torch.cuda.OutOfMemoryError("CUDA out of memory.")), load_settings({}), bucket=None, send_progress=lambda *a: None)
    answer = oom({"id": "j1", "input": {"image_base64": image}})
    assert answer["error"].startswith("gpu_out_of_memory:") and answer["refresh_worker"] is False and freed == [1]
    broken = make_handler(FailingEngine(ValueError("a bug")), load_settings({}), bucket=None, send_progress=lambda *a: None)
    answer = broken({"id": "j2", "input": {"image_base64": image}})
    assert answer == {"error": "internal_error: internal error", "refresh_worker": True}
