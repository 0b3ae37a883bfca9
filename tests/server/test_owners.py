"""Owner ids: one grammar at submit, and owner routes that name exactly one subject (issue 13, class 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from litestar.testing import TestClient

from server.app import create_app
from server.owners import MAX_OWNER_CHARS, is_valid_owner
from tests.support.servers import BoxFinishStage, TimedStage, fake_engine, make_settings, small_png, wait_until

KEY = {"Authorization": "Bearer test-key-1"}
TERMINAL = {"succeeded", "failed", "cancelled", "expired"}

VALID = ["a", "Z", "0", "user-1", "a.b", "a_b", "tenant:42", "alice@example.com", "-", "_", ":", "@", ".a", "x" * MAX_OWNER_CHARS]
# One of every character class that is not in the grammar, plus the shapes that are.
INVALID = [
    "", "x" * (MAX_OWNER_CHARS + 1), ".", "..", "...",
    "a/b", "/victim", "victim/", "a\\b", "a%2Fb", "%", "a b", " a", "a ", "a\tb", "a\nb", "a\x00b", "a\x7fb",
    "a#b", "a?b", "a+b", "a~b", "a*b", "a,b", "a;b", "a=b", "a&b", "a'b", 'a"b', "a<b", "a|b", "a!b", "a$b",
    "é", "a\u0301", "ａ", "ı", "\u200b", "\U0001f600", "a\u2028b",
]


@pytest.mark.parametrize("owner", VALID)
def test_grammar_accepts(owner: str) -> None:
    assert is_valid_owner(owner)


@pytest.mark.parametrize("owner", INVALID)
def test_grammar_refuses(owner: str) -> None:
    assert not is_valid_owner(owner)


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path / "data", server__queue_size=8)
    app = create_app(settings, fake_engine(settings, TimedStage(0.001), BoxFinishStage()))
    with TestClient(app) as test_client:
        wait_until(lambda: test_client.get("/readyz").status_code == 200, 30)
        yield test_client


def _submit(client: TestClient, owner: str):  # noqa: ANN202
    return client.post(
        "/v1/jobs", files={"image": ("p.png", small_png(), "image/png")}, data={"owner": owner, "steps": "1"}, headers=KEY
    )


def _listed(client: TestClient, owner: str) -> list[str]:
    response = client.get(f"/v1/owners/{owner}/jobs", headers=KEY)
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["jobs"]]


@pytest.mark.parametrize("owner", [o for o in INVALID if o and "\x00" not in o])
def test_submit_refuses_ids_outside_the_grammar(client: TestClient, owner: str) -> None:
    response = _submit(client, owner)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_owner"


def test_submit_accepts_every_class_and_lists_it_exactly(client: TestClient) -> None:
    owner = "Az09._:@-"
    job_id = _submit(client, owner).json()["id"]
    assert _listed(client, owner) == [job_id]
    # An escaped '@' and ':' name the same id (decoded once, then checked against the grammar).
    assert _listed(client, "Az09._%3A%40-") == [job_id]


ATTACKS = [
    "%2Fvictim", "victim%2F", "%2Fvictim%2F", "%2fvictim", "/victim", "victim/", "%2E%2E%2Fvictim", "%2E/victim",
    "..%2Fvictim", "%5Cvictim", "victim%00", "victim%20", "%20victim", "VICTIM", "victim%2", "victim%zz",
    "vict%C4%B1m", "%EF%BD%96ictim", "victim;x", "",
]


@pytest.mark.parametrize("path", ATTACKS)
def test_owner_routes_never_reach_another_owner(client: TestClient, path: str) -> None:
    victim = _submit(client, "victim").json()["id"]
    wait_until(lambda: client.get(f"/v1/jobs/{victim}", headers=KEY).json()["status"] in TERMINAL)
    listing = client.get(f"/v1/owners/{path}/jobs", headers=KEY)
    erasure = client.delete(f"/v1/owners/{path}", headers=KEY)
    for response in (listing, erasure):
        if response.status_code == 200:
            assert response.json()["jobs"] == []
        elif response.status_code != 204:  # "VICTIM" is another, valid owner: erasing it is fine
            assert response.status_code in {404, 405, 422}, (path, response.status_code, response.text)
    assert _listed(client, "victim") == [victim]
    assert client.get(f"/v1/jobs/{victim}/model.glb", headers=KEY).status_code == 200


def test_erasure_matches_exactly(client: TestClient) -> None:
    ids = {owner: _submit(client, owner).json()["id"] for owner in ("a.b", "a-b", "a_b", "A.B")}
    for job_id in ids.values():
        wait_until(lambda j=job_id: client.get(f"/v1/jobs/{j}", headers=KEY).json()["status"] in TERMINAL)
    assert client.delete("/v1/owners/a.b", headers=KEY).status_code == 204
    assert _listed(client, "a.b") == []
    for owner in ("a-b", "a_b", "A.B"):
        assert _listed(client, owner) == [ids[owner]]
    assert client.delete("/v1/owners/..", headers=KEY).status_code in {404, 422}
    assert client.delete("/v1/owners/" + "x" * (MAX_OWNER_CHARS + 1), headers=KEY).status_code == 422
