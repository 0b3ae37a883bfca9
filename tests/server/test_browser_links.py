"""In headless Chromium: a page on another origin that never sees the API key follows a job
through its signed links (EventSource to `end`, then the GLB), and the API docs page loads
with nothing from any other origin."""

from __future__ import annotations

import threading
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from tests.support.browser import chromium
from tests.support.lifecycle import API_KEY, ServerProcess, free_port
from tests.support.servers import small_png

pytestmark = pytest.mark.timeout(300)

# The web app's page: it gets only the signed links (here in its URL's fragment), never the key.
APP_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>web app</title>
<script>
window.result = { events: [], glb: null, error: null };
const links = JSON.parse(decodeURIComponent(location.hash.slice(1)));
const source = new EventSource(links.events);
for (const type of ["status", "queue", "progress", "end"]) {
  source.addEventListener(type, async (event) => {
    window.result.events.push({ type, id: event.lastEventId, data: JSON.parse(event.data) });
    if (type !== "end") return;
    source.close();
    try {
      const response = await fetch(links.model);
      const bytes = new Uint8Array(await response.arrayBuffer());
      window.result.glb = { status: response.status, size: bytes.length,
                            magic: String.fromCharCode(...bytes.slice(0, 4)),
                            disposition: response.headers.get("Content-Disposition") };
    } catch (error) {
      window.result.error = String(error);
    }
  });
}
source.onerror = () => { if (source.readyState === EventSource.CLOSED && !window.result.glb) window.result.error = "closed"; };
</script>
"""


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def app_origin(tmp_path_factory) -> Iterator[str]:  # noqa: ANN001
    folder = tmp_path_factory.mktemp("webapp")
    (folder / "index.html").write_text(APP_PAGE)
    port = free_port()
    httpd = HTTPServer(("127.0.0.1", port), partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{port}"  # another host name as well as another port: another origin
    httpd.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory, app_origin: str) -> Iterator[ServerProcess]:  # noqa: ANN001
    env = {"LIFT3D_CORS_ORIGINS": app_origin}
    process = ServerProcess(tmp_path_factory.mktemp("links") / "data", engine="fake", env=env).start()
    yield process
    process.stop()


def absolute(server: ServerProcess, link: str) -> str:
    return server.base_url + link


def test_a_page_on_another_origin_follows_the_job_and_fetches_the_glb_by_link(server: ServerProcess, app_origin: str) -> None:
    import json
    from urllib.parse import quote

    # The web app's backend: submits with the key, keeps the key, hands over only the signed links.
    with server.client() as backend:
        job = backend.post("/v1/jobs?steps=4", content=small_png(), headers={"Content-Type": "image/png"}).json()
    links = {name: absolute(server, job["signed_links"][name]) for name in ("events", "model")}

    with chromium() as browser:
        page = browser.new_page()
        requests: list[tuple[str, dict]] = []
        page.on("request", lambda r: requests.append((r.url, r.headers)))
        page.goto(f"{app_origin}/index.html#{quote(json.dumps(links))}")
        page.wait_for_function("window.result.glb !== null || window.result.error !== null", timeout=120_000)
        result = page.evaluate("window.result")

    assert result["error"] is None, result
    types = [event["type"] for event in result["events"]]
    assert types.count("end") == 1 and types[-1] == "end", types
    assert "progress" in types and all(event["id"] for event in result["events"])
    assert result["events"][-1]["data"]["status"] == "succeeded"
    assert result["glb"]["status"] == 200 and result["glb"]["magic"] == "glTF" and result["glb"]["size"] > 100
    assert result["glb"]["disposition"].startswith("attachment")  # exposed to the page by CORS
    to_api = [(url, headers) for url, headers in requests if url.startswith(server.base_url)]
    assert to_api and all("authorization" not in {k.lower() for k in headers} for _, headers in to_api)
    assert all(API_KEY not in url for url, _ in requests)


def test_the_api_docs_page_loads_offline_without_a_key(server: ServerProcess) -> None:
    with chromium() as browser:
        page = browser.new_page()
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(server.base_url + "/schema/swagger")
        page.wait_for_selector(".swagger-ui .info .title", timeout=60_000)
        assert "lift3d" in page.inner_text(".swagger-ui .info .title")
        assert page.is_visible("button.authorize")
        page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    origins = {urlsplit(url)._replace(path="", query="", fragment="").geturl() for url in requests if not url.startswith("data:")}
    assert origins == {server.base_url}, origins
