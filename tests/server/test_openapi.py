"""The OpenAPI document says what the server does, and the docs page works offline and without a key."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Iterator

import pytest
from litestar.testing import TestClient

from lift3d import errors
from server.app import create_app
from server.openapi import PUBLIC_ROUTES, ROUTE_PROBLEMS, problem_codes
from server.submission import SUBMIT_OPTIONS
from tests.support.servers import fake_engine, make_settings


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:  # noqa: ANN001
    settings = make_settings(tmp_path_factory.mktemp("openapi") / "data")
    with TestClient(create_app(settings, fake_engine(settings))) as client:
        yield client


@pytest.fixture(scope="module")
def doc(client: TestClient) -> dict:
    response = client.get("/schema/openapi.json")  # no key: the document is public
    assert response.status_code == 200
    return response.json()


def operations(doc: dict) -> Iterator[tuple[str, str, dict]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield path, method, op


def test_every_error_answer_is_a_declared_problem(doc: dict) -> None:
    for path, method, op in operations(doc):
        errors_ = {code: r for code, r in op["responses"].items() if code[0] in "45"}
        # 400 and 503 too: bad framing and the connection cap are answered below the app, on any route.
        assert {"400", "500", "503"} <= set(errors_), (method, path)
        if path not in PUBLIC_ROUTES:
            assert "401" in errors_ and op.get("security") != [], (method, path)
        for code, response in errors_.items():
            if (path, code) == ("/readyz", "503"):
                assert set(response["content"]) == {"application/json", "application/problem+json"}
                continue
            assert list(response["content"]) == ["application/problem+json"], (method, path, code)
            assert response["content"]["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
    # Litestar's own 400 body (status_code/detail/extra) is never sent, so it is never declared.
    assert "status_code" not in str(doc)


def test_every_operation_lists_its_problem_statuses(doc: dict) -> None:
    # A new route needs its entry in server.openapi.ROUTE_PROBLEMS (the statuses it can answer).
    listed = {(method, path) for path, method, _ in operations(doc)}
    assert listed <= set(ROUTE_PROBLEMS), listed - set(ROUTE_PROBLEMS)


def test_the_problem_code_enum_holds_every_error_code(doc: dict) -> None:
    enum = set(doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"])
    assert enum == set(problem_codes())
    for cls in (errors.QueueFull, errors.LinkSignatureInvalid, errors.TruncatedImage, errors.ResultDecryptionError):
        assert cls.code in enum
    assert {"invalid_steps", "invalid_owner", "unknown_option", "unauthorized"} <= enum


def test_both_body_forms_carry_every_option_with_its_range(doc: dict) -> None:
    submit = doc["paths"]["/v1/jobs"]["post"]
    content = submit["requestBody"]["content"]
    assert {"multipart/form-data", "image/png", "image/jpeg", "image/webp", "image/gif"} == set(content)
    form = content["multipart/form-data"]["schema"]["properties"]
    query = {p["name"]: p["schema"] for p in submit["parameters"] if p["in"] == "query"}
    assert set(form) == {"image", *SUBMIT_OPTIONS} and set(query) == set(SUBMIT_OPTIONS)
    assert form["steps"]["minimum"] == 1 and form["steps"]["maximum"] == 200 and form["steps"] == query["steps"]
    assert form["remove_background"]["enum"] == ["auto", "on", "off"]
    assert query["retention_seconds"]["maximum"] > 0
    assert {"Location", "Idempotent-Replayed"} <= set(submit["responses"]["202"]["headers"])
    assert "Retry-After" in submit["responses"]["429"]["headers"]
    assert "GetJob" in submit["responses"]["202"]["links"]
    key = next(p for p in submit["parameters"] if p["name"] == "Idempotency-Key")
    assert key["schema"]["minLength"] == 1 and key["schema"]["maxLength"] == 200  # empty is a 400


def test_sse_and_public_routes(doc: dict) -> None:
    events = doc["paths"]["/v1/jobs/{job_id}/events"]["get"]
    assert list(events["responses"]["200"]["content"]) == ["text/event-stream"]
    item = events["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert item["properties"]["event"]["enum"] == ["status", "queue", "progress", "end"]
    assert "Last-Event-ID" in {p["name"] for p in events["parameters"]}
    assert events["security"] == [{"bearer": []}, {"signedLink": []}]
    for path in ("/healthz", "/readyz", "/demo"):
        assert doc["paths"][path]["get"]["security"] == [], path


class Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:  # noqa: ANN001
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def test_the_docs_page_loads_its_assets_from_this_server_without_a_key(client: TestClient) -> None:
    page = client.get("/schema/swagger")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    # The pinned Swagger UI (4.15) renders OpenAPI 3.0 only: the page embeds the 3.0 spelling.
    assert '"openapi":"3.0.3"' in page.text and '"nullable":true' in page.text
    refs = Refs()
    refs.feed(page.text)
    assert refs.urls and all(url.startswith("/schema/assets/") for url in refs.urls), refs.urls
    assert not re.search(r"https?://(?!127\.0\.0\.1)", page.text.split("spec:", 1)[0])  # nothing foreign in the head
    for url in refs.urls:
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 500, url
    bundle = client.get("/schema/assets/swagger-ui-bundle.js")
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert client.get("/schema/assets/../../etc/passwd").status_code == 404
    assert client.get("/schema/assets/index.html").status_code == 404


def test_every_code_the_edge_writes_by_hand_is_in_the_problem_enum() -> None:
    """Codes given as ``code="..."`` at a raise (not a class's own) must be in the documented enum too."""
    import re

    from server.openapi import problem_codes
    from tests.support.paths import REPO

    sources = [*sorted((REPO / "server").glob("*.py")), REPO / "pipeline" / "options.py"]
    written = {code for path in sources for code in re.findall(r'\bcode="([a-z_]+)"', path.read_text())}
    assert written, "the scan found no codes: the pattern no longer matches the sources"
    assert written - set(problem_codes()) == set()
