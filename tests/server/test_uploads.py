"""Upload framing: a multipart body must be complete, and an Idempotency-Key must not be empty (issue 13, class 7)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
from litestar.testing import TestClient

from lift3d.errors import BadRequest
from server.app import create_app
from server.uploads import read_multipart_image
from tests.support.servers import BoxFinishStage, TimedStage, fake_engine, make_settings, small_png, wait_until

KEY = {"Authorization": "Bearer test-key-1"}
BOUNDARY = "lift3d-test-boundary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def form(image: bytes, *, close: str = f"\r\n--{BOUNDARY}--\r\n") -> bytes:
    head = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"steps\"\r\n\r\n1\r\n"
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.png\"\r\n"
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + image + close.encode()


async def _chunks(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _read(body: bytes):  # noqa: ANN202
    return asyncio.run(read_multipart_image(_chunks(body), CONTENT_TYPE, 1_000_000))


def test_a_complete_form_is_read() -> None:
    upload = _read(form(b"PNGDATA"))
    assert upload.image == b"PNGDATA" and upload.fields == {"steps": "1"}
    # The epilogue after the closing boundary is optional.
    assert _read(form(b"PNGDATA", close=f"\r\n--{BOUNDARY}--")).image == b"PNGDATA"


@pytest.mark.parametrize(
    "close",
    ["", "\r\n", f"\r\n--{BOUNDARY}", f"\r\n--{BOUNDARY}\r\n", f"\r\n--{BOUNDARY}-", f"\r\n--{BOUNDARY[:-3]}"],
)
def test_a_form_without_its_closing_boundary_is_refused(close: str) -> None:
    with pytest.raises(BadRequest) as info:
        _read(form(b"PNGDATA", close=close))
    assert info.value.code == "incomplete_multipart"


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path / "data")
    app = create_app(settings, fake_engine(settings, TimedStage(0.001), BoxFinishStage()))
    with TestClient(app) as test_client:
        wait_until(lambda: test_client.get("/readyz").status_code == 200, 30)
        yield test_client


def test_an_unclosed_form_is_a_400_problem_and_no_job(client: TestClient) -> None:
    response = client.post("/v1/jobs", content=form(small_png(), close=""), headers={**KEY, "Content-Type": CONTENT_TYPE})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "incomplete_multipart"
    ok = client.post("/v1/jobs", content=form(small_png()), headers={**KEY, "Content-Type": CONTENT_TYPE})
    assert ok.status_code == 202, ok.text


@pytest.mark.parametrize("key", ["", " ", "\t"])
def test_an_empty_idempotency_key_is_a_400_problem(client: TestClient, key: str) -> None:
    headers = {**KEY, "Content-Type": "image/png", "Idempotency-Key": key}
    for _ in range(2):
        response = client.post("/v1/jobs?steps=1", content=small_png(), headers=headers)
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "invalid_idempotency_key"


def test_a_real_idempotency_key_still_replays(client: TestClient) -> None:
    headers = {**KEY, "Content-Type": "image/png", "Idempotency-Key": "k-1"}
    first = client.post("/v1/jobs?steps=1", content=small_png(), headers=headers)
    second = client.post("/v1/jobs?steps=1", content=small_png(), headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"] and second.headers["idempotent-replayed"] == "true"
