"""Signed job links: each opens one file of one job, without the API key, until it expires."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from litestar.testing import TestClient

from server.app import create_app
from server.links import LinkSigner
from tests.support.servers import BoxFinishStage, TimedStage, fake_engine, make_settings, small_png, wait_until

KEY = {"Authorization": "Bearer test-key-1"}


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path / "data", server__link_secret="test-link-secret")
    gate = threading.Event()
    gate.set()
    app = create_app(settings, fake_engine(settings, TimedStage(0.01, gate=gate), BoxFinishStage()))
    with TestClient(app) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, 30)
        yield client


def finished_job(client: TestClient) -> dict:
    submitted = client.post(
        "/v1/jobs?steps=2&return_views=true", content=small_png(), headers={**KEY, "Content-Type": "image/png"}
    )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert submitted.json()["signed_links"]["events"].startswith(f"/v1/jobs/{job_id}/events?sig=")
    return wait_until(lambda: (v := client.get(f"/v1/jobs/{job_id}", headers=KEY).json())["status"] == "succeeded" and v)


def signer(client: TestClient) -> LinkSigner:
    return client.app.state.services.signer


def assert_forbidden(response) -> None:  # noqa: ANN001
    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "invalid_signature"


def test_valid_links_open_their_files_without_the_key(client: TestClient) -> None:
    job = finished_job(client)
    links = job["signed_links"]
    model = client.get(links["model"])
    assert (model.status_code, model.headers["content-type"]) == (200, "model/gltf-binary")
    assert model.content == client.get(job["links"]["model"], headers=KEY).content
    views = client.get(links["views"])
    assert (views.status_code, views.content[:8]) == (200, b"\x89PNG\r\n\x1a\n")
    events = client.get(links["events"])
    assert events.status_code == 200 and "event: end" in events.text
    # The plain links still need the key, and a link opens nothing else of the job.
    assert client.get(job["links"]["model"]).status_code == 401
    assert client.get(job["links"]["self"] + "?" + urlsplit(links["model"]).query).status_code == 401
    assert client.delete(job["links"]["self"] + "?" + urlsplit(links["model"]).query).status_code == 401


def test_expired_links_are_refused(client: TestClient) -> None:
    job = finished_job(client)
    stale = signer(client).url(job["links"]["model"], job["id"], "model.glb", int(time.time()) - 1)
    assert_forbidden(client.get(stale))
    fresh = signer(client).url(job["links"]["model"], job["id"], "model.glb", int(time.time()) + 60)
    assert client.get(fresh).status_code == 200


def test_a_link_never_yields_a_longer_lived_one(client: TestClient) -> None:
    """The `end` event on a stream opened by a link carries links that expire with that link."""
    import json

    job = finished_job(client)
    events_link = job["signed_links"]["events"]
    presented = int(parse_qs(urlsplit(events_link).query)["sig"][0].split(".")[0])
    real_clock = signer(client)._clock
    signer(client)._clock = lambda: real_clock() + 30  # later, within the link's life
    stream = client.get(events_link)
    end = json.loads([line for line in stream.text.splitlines() if line.startswith("data:")][-1][5:])
    handed = end["signed_links"]
    for name in ("events", "model", "views"):
        assert int(parse_qs(urlsplit(handed[name]).query)["sig"][0].split(".")[0]) == presented
    signer(client)._clock = lambda: real_clock() + 10_000  # past the original link's expiry
    assert_forbidden(client.get(handed["model"]))
    assert_forbidden(client.get(handed["events"]))
    # With the key, the stream hands out fresh links as before.
    keyed = client.get(job["links"]["events"], headers=KEY)
    fresh = json.loads([line for line in keyed.text.splitlines() if line.startswith("data:")][-1][5:])
    assert int(parse_qs(urlsplit(fresh["signed_links"]["model"]).query)["sig"][0].split(".")[0]) > presented


def test_tampered_links_are_refused(client: TestClient) -> None:
    job = finished_job(client)
    url = job["signed_links"]["model"]
    token = parse_qs(urlsplit(url).query)["sig"][0]
    expires, mac = token.split(".")
    path = job["links"]["model"]
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    for bad in (f"{int(expires) + 3600}.{mac}", f"{expires}.{flipped}", f"{expires}.", mac, "", "٣٤.abc"):
        assert_forbidden(client.get(path, params={"sig": bad}))


def test_links_are_scoped_to_their_job_and_file(client: TestClient) -> None:
    first, second = finished_job(client), finished_job(client)
    query = urlsplit(first["signed_links"]["model"]).query
    assert_forbidden(client.get(f"{second['links']['model']}?{query}"))  # another job
    assert_forbidden(client.get(f"{first['links']['views']}?{query}"))  # another file of the same job
    assert_forbidden(client.get(f"{first['links']['events']}?{query}"))


def test_erasing_the_job_makes_its_links_404(client: TestClient) -> None:
    job = finished_job(client)
    assert client.delete(job["links"]["self"], headers=KEY).status_code == 204
    for name in ("events", "model", "views"):
        gone = client.get(job["signed_links"][name])
        assert (gone.status_code, gone.json()["code"]) == (404, "not_found"), name


def test_without_a_configured_secret_each_process_signs_with_its_own(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    one, two = LinkSigner.from_settings(settings.server), LinkSigner.from_settings(settings.server)
    assert one.token("job", "model.glb", 10**10) != two.token("job", "model.glb", 10**10)
    assert one.ttl_seconds == 15 * 60
