"""CORS for a web app on another origin: the headers it acts on are readable, and signed links preflight without a key."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from litestar.testing import TestClient

from server.app import CORS_EXPOSE_HEADERS, create_app
from tests.support.servers import fake_engine, make_settings, small_png, wait_until

APP = "https://app.example"
KEY = {"Authorization": "Bearer test-key-1"}


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path / "data", server__cors_origins=[APP])
    with TestClient(create_app(settings, fake_engine(settings))) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, 30)
        yield client


def exposed(response) -> set[str]:  # noqa: ANN001
    return {h.strip().lower() for h in response.headers.get("access-control-expose-headers", "").split(",")}


def test_the_headers_a_web_app_reads_are_exposed(client: TestClient) -> None:
    headers = {**KEY, "Origin": APP, "Content-Type": "image/png", "Idempotency-Key": "k-1"}
    first = client.post("/v1/jobs?steps=2", content=small_png(), headers=headers)
    replay = client.post("/v1/jobs?steps=2", content=small_png(), headers=headers)
    assert (first.status_code, replay.status_code) == (202, 202)
    assert replay.headers["idempotent-replayed"] == "true" and first.headers["location"]
    assert first.headers["access-control-allow-origin"] == APP
    assert {h.lower() for h in CORS_EXPOSE_HEADERS} <= exposed(replay)
    assert {"location", "retry-after", "idempotent-replayed", "content-disposition"} <= exposed(first)
    job = wait_until(lambda: (v := client.get(f"/v1/jobs/{first.json()['id']}", headers=KEY).json())["status"] == "succeeded" and v)
    model = client.get(job["signed_links"]["model"], headers={"Origin": APP})
    assert model.status_code == 200 and "content-disposition" in exposed(model)
    assert model.headers["access-control-allow-origin"] == APP


@pytest.mark.parametrize("path", ["/v1/jobs/any/events?sig=1.x", "/v1/jobs/any/model.glb?sig=1.x", "/v1/jobs/any/views.png"])
def test_preflight_for_signed_routes_needs_no_credentials(client: TestClient, path: str) -> None:
    preflight = client.options(path, headers={"Origin": APP, "Access-Control-Request-Method": "GET"})
    assert preflight.status_code == 204, preflight.text
    assert preflight.headers["access-control-allow-origin"] == APP
    assert "GET" in preflight.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in preflight.headers


def test_preflight_for_submitting_allows_the_key_and_idempotency_headers(client: TestClient) -> None:
    preflight = client.options(
        "/v1/jobs",
        headers={"Origin": APP, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, idempotency-key"},
    )
    assert preflight.status_code == 204
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "idempotency-key" in allowed and "last-event-id" in allowed


def test_other_origins_get_no_cors_grant(client: TestClient) -> None:
    response = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers
