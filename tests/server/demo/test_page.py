"""The demo page as served: a strict CSP, no inline script, hashed immutable assets, a switch."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from litestar.testing import TestClient

from server.app import create_app
from server.demo import page as demo_page
from tests.support.servers import fake_engine, make_settings


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_script = False
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline_script = True


def client_for(tmp_path: Path, **overrides) -> TestClient:
    settings = make_settings(tmp_path / "data", **overrides)
    return TestClient(create_app(settings, fake_engine(settings)))


def parse(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    return tags


def test_the_page_is_public_strict_and_links_only_hashed_same_origin_assets(tmp_path: Path) -> None:
    with client_for(tmp_path) as client:
        root = client.get("/", follow_redirects=False)
        assert root.status_code in (301, 302, 307, 308) and root.headers["location"] == "/demo"
        page = client.get("/demo")  # no API key: the page holds no data
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
        assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
        assert "unsafe-eval" not in csp and "http" not in csp and "*" not in csp
        tags = parse(page.text)
        assert not tags.inline_script
        links = [attrs.get("src") or attrs.get("href") for tag, attrs in tags.tags if tag in ("script", "link")]
        assert links and all(re.fullmatch(r"/demo/assets/[\w-]+\.[0-9a-f]{16}\.(js|css)", link or "") for link in links)
        assert not any("on" + event in page.text for event in ("click=", "load=", "error="))  # no inline handlers
        for link in links:
            asset = client.get(link)
            assert asset.status_code == 200
            assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert client.get("/demo/assets/demo.0000000000000000.js").status_code == 404


def test_without_the_viewer_the_page_says_how_to_enable_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(demo_page, "VIEWER", tmp_path / "absent" / "model-viewer.min.js")
    with client_for(tmp_path) as client:
        page = client.get("/demo").text
    assert 'data-vendor="model-viewer"' not in page
    assert "make install" in page


@pytest.mark.skipif(not demo_page.VIEWER.is_file(), reason="the viewer is installed by `make install` (needs npm)")
def test_the_viewer_comes_from_the_pinned_npm_package(tmp_path: Path) -> None:
    import json

    lock = json.loads((demo_page.HERE / "package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/@google/model-viewer"]["version"]
    installed = json.loads((demo_page.VIEWER.parents[1] / "package.json").read_text())["version"]
    assert installed == pinned
    with client_for(tmp_path) as client:
        page = client.get("/demo").text
        src = re.search(r'src="(/demo/assets/model-viewer\.[0-9a-f]{16}\.js)"', page).group(1)
        assert client.get(src).content == demo_page.VIEWER.read_bytes()


def test_the_demo_switch_turns_the_page_off(tmp_path: Path) -> None:
    with client_for(tmp_path, server__demo=False) as client:
        assert client.get("/demo").status_code == 404
        assert client.get("/", follow_redirects=False).status_code == 404
