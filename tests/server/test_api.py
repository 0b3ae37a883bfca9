"""API v1 in process (Litestar TestClient) with a fake engine: routes, auth, errors, queue semantics."""

from __future__ import annotations

import io
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from litestar.testing import TestClient
from PIL import Image

from lift3d.errors import UndecodableImage
from server.app import create_app
from server.auth import generated_key_path
from tests.support.servers import (
    BoxFinishStage,
    FailingStage,
    GatedWarmupEngine,
    TimedStage,
    fake_engine,
    make_settings,
    small_png,
    wait_until,
)
from pipeline.decode import DecodeStage

KEY = {"Authorization": "Bearer test-key-1"}
TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


class Api:
    def __init__(self, client: TestClient, stage: TimedStage, gate: threading.Event) -> None:
        self.client = client
        self.stage = stage
        self.gate = gate

    @property
    def manager(self):  # noqa: ANN201
        return self.client.app.state.services.manager

    def submit(self, data: bytes | None = None, **fields: Any):  # noqa: ANN201
        form = {k: str(v) for k, v in fields.items()}
        return self.client.post(
            "/v1/jobs", files={"image": ("photo.png", data or small_png(), "image/png")}, data=form, headers=KEY
        )

    def job(self, job_id: str) -> dict[str, Any]:
        return self.client.get(f"/v1/jobs/{job_id}", headers=KEY).json()

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 20) -> dict[str, Any]:
        return wait_until(lambda: (j := self.job(job_id))["status"] in statuses and j, timeout)


def start_client(app) -> TestClient:  # noqa: ANN001
    client = TestClient(app)
    client.__enter__()
    wait_until(lambda: client.get("/readyz").status_code == 200, 30)
    return client


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[Api]:
    settings = make_settings(tmp_path / "data", server__queue_size=3)
    gate = threading.Event()
    gate.set()  # open for warm-up; tests close it to hold a job in its running stage
    stage = TimedStage(0.01, gate=gate)
    app = create_app(settings, fake_engine(settings, stage, BoxFinishStage()))
    client = start_client(app)
    try:
        yield Api(client, stage, gate)
    finally:
        gate.set()
        client.__exit__(None, None, None)


def sse_events(client: TestClient, path: str) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    name = None
    with client.stream("GET", path, headers=KEY) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
            elif line.startswith(":"):
                events.append(("comment", line))
    return events


# -- the happy path ----------------------------------------------------------------


def test_multipart_submit_events_download_delete(api: Api) -> None:
    response = api.submit(steps=3, seed=7, return_views="true", owner="user-1")
    assert response.status_code == 202, response.text
    body = response.json()
    job_id = body["id"]
    assert response.headers["location"] == f"/v1/jobs/{job_id}"
    assert body["status"] == "queued"
    assert body["links"] == {
        "self": f"/v1/jobs/{job_id}",
        "events": f"/v1/jobs/{job_id}/events",
        "model": f"/v1/jobs/{job_id}/model.glb",
        "views": f"/v1/jobs/{job_id}/views.png",
        # Presigned bucket URLs appear only with provider-encrypted S3 results (test_lifecycle_s3.py).
        "model_download": None,
        "views_download": None,
    }

    events = sse_events(api.client, f"/v1/jobs/{job_id}/events")
    names = [name for name, _ in events if name != "comment"]
    assert names[-1] == "end" and names.count("end") == 1
    assert "progress" in names
    progress = [data["progress"] for name, data in events if name == "progress"]
    assert progress == sorted(progress) and progress[-1] <= 1.0
    final = events[-1][1]
    assert final["status"] == "succeeded"

    job = api.job(job_id)
    assert job["status"] == "succeeded" and job["progress"] == 1.0
    assert job["seed"] == 7 and job["options"]["steps"] == 3
    assert set(job["timings"]) == {"decode", "multiview", "finish"}
    assert job["result"]["faces"] == 12 and job["result"]["bytes"] > 0
    assert job["created_at"] <= job["started_at"] <= job["finished_at"] < job["expires_at"]
    assert job["error"] is None

    model = api.client.get(f"/v1/jobs/{job_id}/model.glb", headers=KEY)
    assert model.status_code == 200
    assert model.headers["content-type"] == "model/gltf-binary"
    assert model.content[:4] == b"glTF" and len(model.content) == job["result"]["bytes"]
    views = api.client.get(f"/v1/jobs/{job_id}/views.png", headers=KEY)
    assert views.status_code == 200 and views.content.startswith(b"\x89PNG")

    listed = api.client.get("/v1/owners/user-1/jobs", headers=KEY).json()
    assert [j["id"] for j in listed["jobs"]] == [job_id]

    assert api.client.delete(f"/v1/jobs/{job_id}", headers=KEY).status_code == 204
    for path in ("", "/model.glb", "/views.png", "/events"):
        gone = api.client.get(f"/v1/jobs/{job_id}{path}", headers=KEY)
        assert gone.status_code == 404, path
        assert gone.headers["content-type"].startswith("application/problem+json")
        assert gone.json()["code"] == "not_found"
    assert api.client.delete(f"/v1/jobs/{job_id}", headers=KEY).status_code == 404


def test_raw_body_with_options_in_query(api: Api) -> None:
    response = api.client.post(
        "/v1/jobs?steps=2&seed=3", content=small_png(), headers={**KEY, "Content-Type": "image/png"}
    )
    assert response.status_code == 202, response.text
    job = api.wait_status(response.json()["id"], TERMINAL)
    assert job["status"] == "succeeded" and job["seed"] == 3 and job["options"]["steps"] == 2
    assert job["links"]["views"] is None
    assert api.client.get(f"/v1/jobs/{job['id']}/views.png", headers=KEY).status_code == 404


def test_an_animated_gif_is_accepted_raw_and_in_a_form(api: Api) -> None:
    frames = [Image.new("RGB", (64, 64), colour) for colour in [(200, 40, 40), (40, 200, 40)]]
    gif = _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    raw = api.client.post("/v1/jobs?steps=1", content=gif, headers={**KEY, "Content-Type": "image/gif"})
    form = api.client.post("/v1/jobs", files={"image": ("a.gif", gif, "image/gif")}, data={"steps": "1"}, headers=KEY)
    for response in (raw, form):
        assert response.status_code == 202, response.text
        assert api.wait_status(response.json()["id"], TERMINAL)["status"] == "succeeded"


def test_idempotency_key(api: Api) -> None:
    image = small_png((1, 2, 3))
    headers = {**KEY, "Idempotency-Key": "order-42", "Content-Type": "image/png"}
    first = api.client.post("/v1/jobs?steps=2", content=image, headers=headers)
    again = api.client.post("/v1/jobs?steps=2", content=image, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other_body = api.client.post("/v1/jobs?steps=2", content=small_png((9, 9, 9)), headers=headers)
    assert other_body.status_code == 422 and other_body.json()["code"] == "idempotency_key_reused"
    other_options = api.client.post("/v1/jobs?steps=3", content=image, headers=headers)
    assert other_options.status_code == 422 and other_options.json()["code"] == "idempotency_key_reused"


# -- auth ---------------------------------------------------------------------------

PROTECTED = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/abc"),
    ("GET", "/v1/jobs/abc/events"),
    ("GET", "/v1/jobs/abc/model.glb"),
    ("GET", "/v1/jobs/abc/views.png"),
    ("DELETE", "/v1/jobs/abc"),
    ("GET", "/v1/owners/someone/jobs"),
    ("DELETE", "/v1/owners/someone"),
    ("GET", "/metrics"),
    ("GET", "/v1/info"),
]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-key-1"}])
def test_every_route_needs_a_key(api: Api, headers: dict[str, str]) -> None:
    for method, path in PROTECTED:
        response = api.client.request(method, path, headers=headers, content=small_png())
        assert response.status_code == 401, (method, path)
        assert response.json()["code"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert api.client.get("/healthz").status_code == 200
    assert api.client.get("/readyz").status_code == 200
    # The docs and the schema are public on purpose (they hold no secret; see server/openapi.py).
    assert api.client.get("/schema/openapi.json").status_code == 200


def test_any_configured_key_works(api: Api) -> None:
    for key in ("test-key-1", "test-key-2"):
        assert api.client.get("/v1/info", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_without_configured_keys_a_private_key_file_is_generated(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", server__api_keys=[])
    app = create_app(settings, fake_engine(settings))
    path = generated_key_path(settings)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = path.read_text().strip()
    assert len(key) >= 32
    with TestClient(app) as client:
        assert client.get("/v1/info").status_code == 401
        assert client.get("/v1/info", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    # The same key survives a restart.
    create_app(settings, fake_engine(settings))
    assert path.read_text().strip() == key


# -- bad input: a clear 4xx, and the server carries on ---------------------------------


def _png(size: tuple[int, int], **save: Any) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 30, 30)).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def _encoded(image: Image.Image, fmt: str, **save: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _bomb_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (6000, 6000), 0).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


BAD_UPLOADS = [
    ("empty", b"", "image/png", 422, "empty_image"),
    ("text as png", b"just some text, not an image", "image/png", 415, "unsupported_media_type"),
    ("bmp", b"BM" + bytes(200), "image/png", 415, "unsupported_media_type"),
    ("gif without trailer", b"GIF89a" + b"\x00" * 64, "image/gif", 422, "truncated_image"),
    ("truncated png", _png((300, 300))[:400], "image/png", 422, "truncated_image"),
    ("png without IEND", _png((300, 300))[:-12], "image/png", 422, "truncated_image"),
    ("1x65500 jpeg", _encoded(Image.new("RGB", (1, 65_500)), "JPEG"), "image/jpeg", 422, "extreme_aspect_ratio"),
    ("garbage after magic", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9", "image/jpeg", 422, "undecodable_image"),
    ("decompression bomb", _bomb_png(), "image/png", 422, "decompression_bomb"),
]


@pytest.mark.parametrize("name,data,content_type,status,code", BAD_UPLOADS, ids=[case[0] for case in BAD_UPLOADS])
def test_bad_uploads(api: Api, name: str, data: bytes, content_type: str, status: int, code: str) -> None:
    raw = api.client.post("/v1/jobs", content=data, headers={**KEY, "Content-Type": content_type})
    assert (raw.status_code, raw.json()["code"]) == (status, code), raw.text
    assert raw.headers["content-type"].startswith("application/problem+json")
    form = api.client.post("/v1/jobs", files={"image": ("x.png", data, content_type)}, headers=KEY)
    assert (form.status_code, form.json()["code"]) == (status, code), form.text


BAD_REQUESTS = [
    ("steps too high", {"steps": "1000"}, 422, "invalid_steps"),
    ("steps not a number", {"steps": "many"}, 422, "invalid_steps"),
    ("guidance too low", {"guidance": "0.1"}, 422, "invalid_guidance"),
    ("bad background mode", {"remove_background": "maybe"}, 422, "invalid_remove_background"),
    ("texture size", {"texture_size": "100"}, 422, "invalid_texture_size"),
    ("target faces", {"target_faces": "3"}, 422, "invalid_target_faces"),
    ("retention too long", {"retention_seconds": str(10**9)}, 422, "invalid_retention_seconds"),
    ("webhook off the allow-list", {"webhook_url": "http://169.254.169.254/latest"}, 422, "webhook_not_allowed"),
    ("unknown option", {"colour": "red"}, 422, "unknown_option"),
]


@pytest.mark.parametrize("name,fields,status,code", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_options(api: Api, name: str, fields: dict[str, str], status: int, code: str) -> None:
    form = api.submit(**fields)
    assert (form.status_code, form.json()["code"]) == (status, code), form.text
    query = "&".join(f"{k}={v}" for k, v in fields.items())
    raw = api.client.post(f"/v1/jobs?{query}", content=small_png(), headers={**KEY, "Content-Type": "image/png"})
    assert raw.json()["code"] == code


ODD_VALUES = [("steps", "+5"), ("steps", "\u0665"), ("steps", " 5"), ("steps", "5 "), ("steps", "\uff15"),
              ("guidance", "nan"), ("return_views", "yes"), ("retention_seconds", "+60"), ("seed", "1_000")]


@pytest.mark.parametrize("name,raw", ODD_VALUES, ids=[f"{n}={r!r}" for n, r in ODD_VALUES])
def test_query_form_and_raw_body_share_one_parser(api: Api, name: str, raw: str) -> None:
    """A value means the same whichever way it comes: form field, multipart query or raw-body query."""
    form = api.submit(**{name: raw})
    multipart_query = api.client.post(
        "/v1/jobs", params={name: raw}, files={"image": ("p.png", small_png(), "image/png")}, headers=KEY
    )
    raw_query = api.client.post(
        "/v1/jobs", params={name: raw}, content=small_png(), headers={**KEY, "Content-Type": "image/png"}
    )
    answers = {(r.status_code, r.json()["code"]) for r in (form, multipart_query, raw_query)}
    assert answers == {(422, f"invalid_{name}")}, [r.text for r in (form, multipart_query, raw_query)]


def test_the_plain_ascii_value_is_accepted_every_way(api: Api) -> None:
    form = api.submit(steps="5")
    raw_query = api.client.post("/v1/jobs?steps=5", content=small_png(), headers={**KEY, "Content-Type": "image/png"})
    assert (form.status_code, raw_query.status_code) == (202, 202), (form.text, raw_query.text)
    assert api.job(form.json()["id"])["options"]["steps"] == api.job(raw_query.json()["id"])["options"]["steps"] == 5


def test_request_shape_errors(api: Api) -> None:
    wrong_type = api.client.post("/v1/jobs", content=b"{}", headers={**KEY, "Content-Type": "application/json"})
    assert (wrong_type.status_code, wrong_type.json()["code"]) == (415, "unsupported_media_type")
    no_image = api.client.post("/v1/jobs", files={"picture": ("a.png", small_png(), "image/png")}, headers=KEY)
    assert (no_image.status_code, no_image.json()["code"]) == (422, "missing_image")


def _multipart(*parts: tuple[bytes, bytes]) -> tuple[bytes, dict[str, str]]:
    """A hand-built form: (Content-Disposition parameters, body) per part."""
    boundary = b"lift3dboundary"
    body = b"".join(
        b"--" + boundary + b"\r\nContent-Disposition: form-data; " + disposition + b"\r\n\r\n" + content + b"\r\n"
        for disposition, content in parts
    )
    return body + b"--" + boundary + b"--\r\n", {"Content-Type": "multipart/form-data; boundary=lift3dboundary"}


def test_no_option_is_dropped_or_ambiguous(api: Api) -> None:
    """Every part is the image or one text option: an option sent as a file, a part without a plain
    name, or an option given twice is refused rather than silently lost or silently overridden."""
    image = (b'name="image"; filename="p.png"', small_png())
    cases = {
        "owner as a file": [image, (b'name="owner"; filename="id.txt"', b"alice")],
        "seed as a file": [(b'name="seed"; filename="s.txt"', b"3"), image],
        "RFC 5987 name only": [image, (b"name*=utf-8''owner", b"alice")],
        "no name": [image, (b'filename="x.txt"', b"alice")],
        "owner twice": [image, (b'name="owner"', b" bad"), (b'name="owner"', b"alice")],
    }
    for label, parts in cases.items():
        body, headers = _multipart(*parts)
        answer = api.client.post("/v1/jobs", content=body, headers={**KEY, **headers})
        assert (answer.status_code, answer.json()["code"]) == (422, "invalid_option"), (label, answer.text)
    twice = api.client.post(
        "/v1/jobs?owner=%20bad&owner=alice", content=small_png(), headers={**KEY, "Content-Type": "image/png"}
    )
    assert (twice.status_code, twice.json()["code"]) == (422, "invalid_option"), twice.text
    assert "more than once" in twice.json()["detail"]
    body, headers = _multipart(image, (b'name="owner"', b"alice"), (b'name="seed"', b"4"))
    accepted = api.client.post("/v1/jobs", content=body, headers={**KEY, **headers})
    assert accepted.status_code == 202, accepted.text
    assert api.job(accepted.json()["id"])["owner"] == "alice"


def test_upload_cap_is_enforced_while_reading(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", engine__decode__max_upload_bytes=50_000)
    with TestClient(create_app(settings, fake_engine(settings))) as client:
        big = os.urandom(200_000)
        declared = client.post("/v1/jobs", content=big, headers={**KEY, "Content-Type": "image/png"})
        assert (declared.status_code, declared.json()["code"]) == (413, "upload_too_large")

        chunks_read = []

        def chunked() -> Iterator[bytes]:  # no Content-Length: the cap must stop the read
            for _ in range(100):
                chunks_read.append(1)
                yield b"\x89PNG" + b"\x00" * 9_996

        streamed = client.post("/v1/jobs", content=chunked(), headers={**KEY, "Content-Type": "image/png"})
        assert (streamed.status_code, streamed.json()["code"]) == (413, "upload_too_large")
        form = client.post("/v1/jobs", files={"image": ("a.png", big, "image/png")}, headers=KEY)
        assert (form.status_code, form.json()["code"]) == (413, "upload_too_large")


def test_server_unaffected_after_bad_input(api: Api) -> None:
    for _, data, content_type, _, _ in BAD_UPLOADS:
        api.client.post("/v1/jobs", content=data, headers={**KEY, "Content-Type": content_type})
    response = api.submit(steps=2)
    assert api.wait_status(response.json()["id"], TERMINAL)["status"] == "succeeded"
    assert api.client.get("/readyz").status_code == 200


# -- queue semantics: cancel, deadline, failures ------------------------------------------


def test_delete_cancels_a_running_job_between_steps(api: Api) -> None:
    api.gate.clear()
    job_id = api.submit(steps=50).json()["id"]
    api.wait_status(job_id, {"running"})
    live = api.manager.live(job_id)
    assert live is not None
    assert api.client.delete(f"/v1/jobs/{job_id}", headers=KEY).status_code == 204
    assert api.client.get(f"/v1/jobs/{job_id}", headers=KEY).status_code == 404
    wait_until(lambda: api.manager.live(job_id) is None)
    assert live.cancel.reason and live.image is None
    # The worker is free again.
    api.gate.set()
    assert api.wait_status(api.submit(steps=2).json()["id"], TERMINAL)["status"] == "succeeded"


def test_delete_removes_a_queued_job_before_it_runs(api: Api) -> None:
    api.gate.clear()
    running = api.submit(steps=5).json()["id"]
    api.wait_status(running, {"running"})
    queued = api.submit(steps=5).json()
    assert queued["queue_position"] == 1
    calls = api.stage.calls
    assert api.client.delete(f"/v1/jobs/{queued['id']}", headers=KEY).status_code == 204
    api.gate.set()
    assert api.wait_status(running, TERMINAL)["status"] == "succeeded"
    time.sleep(0.2)
    assert api.stage.calls == calls  # the deleted job never reached the model stage


class UncooperativeStage(TimedStage):
    """Holds the worker on the gate without checking cancellation (a stage stuck in native code)."""

    def run(self, job, ctx) -> None:  # noqa: ANN001
        self.calls += 1
        if job.options.seed != 0:  # not the warm-up
            self.gate.wait(30)


def test_queued_job_past_its_deadline_fails_without_running(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", server__job_deadline_seconds=0.5)
    gate = threading.Event()
    stage = UncooperativeStage(0.0, gate=gate)
    client = start_client(create_app(settings, fake_engine(settings, stage, BoxFinishStage())))
    raw = {**KEY, "Content-Type": "image/png"}
    try:
        first = client.post("/v1/jobs?steps=2&seed=1", content=small_png(), headers=raw).json()["id"]
        wait_until(lambda: client.get(f"/v1/jobs/{first}", headers=KEY).json()["status"] == "running")
        second = client.post("/v1/jobs?steps=2&seed=2", content=small_png(), headers=raw).json()["id"]
        # Failed while the worker is still busy: the queue slot is freed at once.
        job = wait_until(lambda: (j := client.get(f"/v1/jobs/{second}", headers=KEY).json())["status"] != "queued" and j, 10)
        assert (job["status"], job["error"]["code"]) == ("failed", "deadline_exceeded")
        assert client.get(f"/v1/jobs/{first}", headers=KEY).json()["status"] == "running"
        calls = stage.calls
        gate.set()
        # The running job overran too: its deadline is checked when the stage returns.
        job = wait_until(lambda: (j := client.get(f"/v1/jobs/{first}", headers=KEY).json())["status"] in TERMINAL and j)
        assert (job["status"], job["error"]["code"]) == ("failed", "deadline_exceeded")
        assert stage.calls == calls  # the queued job never reached the model stage
    finally:
        gate.set()
        client.__exit__(None, None, None)


def test_engine_errors_become_failed_jobs_with_their_code(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    failing = FailingStage(UndecodableImage("the model could not read it", code="model_said_no"))
    engine = fake_engine(settings, failing, BoxFinishStage())
    # Warm-up must pass: fail only client jobs (seed 0 is the warm-up's).
    original = failing.run
    failing.run = lambda job, ctx: None if job.options.seed == 0 else original(job, ctx)  # type: ignore[method-assign]
    client = start_client(create_app(settings, engine))
    try:
        response = client.post("/v1/jobs?seed=5", content=small_png(), headers={**KEY, "Content-Type": "image/png"})
        job = wait_until(
            lambda: (j := client.get(f"/v1/jobs/{response.json()['id']}", headers=KEY).json())["status"] in TERMINAL and j
        )
        assert job["status"] == "failed"
        assert job["error"] == {"code": "model_said_no", "message": "the model could not read it"}
        assert job["result"] is None
        model = client.get(f"/v1/jobs/{job['id']}/model.glb", headers=KEY)
        assert (model.status_code, model.json()["code"]) == (409, "job_not_succeeded")
    finally:
        client.__exit__(None, None, None)


def test_readyz_is_503_until_warm(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    warm_gate = threading.Event()
    engine = GatedWarmupEngine(settings.engine, [DecodeStage(), TimedStage(0.0), BoxFinishStage()], warm_gate)
    with TestClient(create_app(settings, engine)) as client:
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["detail"] == "warming_up"
        assert client.get("/healthz").status_code == 200
        # Jobs submitted during warm-up wait for it, then run.
        job_id = client.post("/v1/jobs?steps=1", content=small_png(), headers={**KEY, "Content-Type": "image/png"}).json()["id"]
        warm_gate.set()
        wait_until(lambda: client.get("/readyz").status_code == 200)
        wait_until(lambda: client.get(f"/v1/jobs/{job_id}", headers=KEY).json()["status"] == "succeeded")


# -- owners, metrics, info, schema ---------------------------------------------------------


def test_owner_erasure(api: Api) -> None:
    a = [api.submit(steps=1, owner="alice").json()["id"] for _ in range(2)]
    b = api.submit(steps=1, owner="bob").json()["id"]
    for job_id in (*a, b):
        api.wait_status(job_id, TERMINAL)
    assert api.client.delete("/v1/owners/alice", headers=KEY).status_code == 204
    assert api.client.get("/v1/owners/alice/jobs", headers=KEY).json()["jobs"] == []
    for job_id in a:
        assert api.client.get(f"/v1/jobs/{job_id}/model.glb", headers=KEY).status_code == 404
    assert [j["id"] for j in api.client.get("/v1/owners/bob/jobs", headers=KEY).json()["jobs"]] == [b]
    assert api.client.get(f"/v1/jobs/{b}/model.glb", headers=KEY).status_code == 200


def test_metrics_and_info(api: Api) -> None:
    api.wait_status(api.submit(steps=2).json()["id"], TERMINAL)
    scraped = api.client.get("/metrics", headers=KEY)
    assert scraped.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"  # each parameter once
    text = scraped.text
    assert 'lift3d_jobs{status="succeeded"} 1.0' in text
    assert "lift3d_queue_depth 0.0" in text
    assert 'lift3d_stage_duration_seconds_count{stage="multiview"}' in text
    assert "lift3d_gpu_memory_allocated_bytes" in text
    info = api.client.get("/v1/info", headers=KEY).json()
    assert info["profile"] == "tiny" and info["weights_mode"] == "tiny"
    assert info["device"] == "cpu" and info["ready"] is True
    assert info["limits"]["queue_size"] == 3
    schema = api.client.get("/schema/openapi.json", headers=KEY).json()
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events", "/v1/owners/{owner}"):
        assert path in schema["paths"], path
    upload = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(upload) == {"multipart/form-data", "image/png", "image/jpeg", "image/webp", "image/gif"}


def test_cors_is_off_by_default_and_settable(tmp_path: Path, api: Api) -> None:
    origin = {"Origin": "https://app.example.com"}
    assert "access-control-allow-origin" not in api.client.get("/healthz", headers=origin).headers
    settings = make_settings(tmp_path / "other", server__cors_origins=["https://app.example.com"])
    with TestClient(create_app(settings, fake_engine(settings))) as client:
        allowed = client.get("/healthz", headers=origin)
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"


def test_drain_fails_queued_jobs_and_cancels_the_running_one_after_the_grace(api: Api) -> None:
    api.gate.clear()
    running = api.submit(steps=5).json()["id"]
    api.wait_status(running, {"running"})
    queued = api.submit(steps=5).json()["id"]
    live = [api.manager.live(running), api.manager.live(queued)]
    started = time.monotonic()
    api.manager.drain(0.3)
    assert time.monotonic() - started < 5
    assert api.client.get("/readyz").json()["detail"] == "draining"
    refused = api.submit(steps=2)
    assert (refused.status_code, refused.json()["code"]) == (503, "shutting_down")
    for job_id in (running, queued):
        job = api.job(job_id)
        assert (job["status"], job["error"]["code"]) == ("failed", "shutting_down"), job_id
    assert all(job is not None and job.image is None for job in live)  # uploads dropped on shutdown too


def test_sse_sends_keepalive_comments_while_a_job_waits(api: Api) -> None:
    api.gate.clear()
    job_id = api.submit(steps=2).json()["id"]
    threading.Timer(1.6, api.gate.set).start()  # keep-alive is 0.5 s in these settings
    events = sse_events(api.client, f"/v1/jobs/{job_id}/events")
    assert ("comment", ": keep-alive") in events
    names = [name for name, _ in events if name != "comment"]
    assert names[0] == "status" and names[-1] == "end"
    statuses = [data["status"] for name, data in events if name == "status"]
    assert statuses[-1] == "running"


def test_events_of_a_finished_job_end_at_once(api: Api) -> None:
    job_id = api.submit(steps=1).json()["id"]
    api.wait_status(job_id, TERMINAL)
    events = sse_events(api.client, f"/v1/jobs/{job_id}/events")
    assert [name for name, _ in events] == ["end"]
    assert events[0][1]["status"] == "succeeded"


def test_engine_that_cannot_load_reports_through_readyz_and_503(tmp_path: Path) -> None:
    from lift3d.errors import WeightsMissing

    class MissingWeightsStage(TimedStage):
        def load(self, runtime) -> None:  # noqa: ANN001
            raise WeightsMissing("no weights for profile quality; run `lift3d weights pull`")

    settings = make_settings(tmp_path / "data")
    with TestClient(create_app(settings, fake_engine(settings, MissingWeightsStage(), BoxFinishStage()))) as client:
        ready = wait_until(lambda: (r := client.get("/readyz")).json().get("detail") != "warming_up" and r)
        assert (ready.status_code, ready.json()["detail"]) == (503, "weights_missing")
        refused = client.post("/v1/jobs", content=small_png(), headers={**KEY, "Content-Type": "image/png"})
        assert (refused.status_code, refused.json()["code"]) == (503, "weights_missing")
