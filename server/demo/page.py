"""Serving the demo page: one HTML document and content-hashed, immutable assets."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from litestar import Response, get
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response import Redirect

from server.auth import PUBLIC

log = logging.getLogger("lift3d.server")

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
VIEWER = HERE / "node_modules" / "@google" / "model-viewer" / "dist" / "model-viewer.min.js"

# Same origin only and no inline script. Two allowances, both for model-viewer: its
# shadow DOM carries <style> elements (without them its own controls spill out of the
# viewer), and it reads the GLB's textures through blob: URLs.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' blob: data:",
        "connect-src 'self' blob: data:",
        "worker-src 'self' blob:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
ASSET_CACHE = "public, max-age=31536000, immutable"
MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


@dataclass(frozen=True)
class Asset:
    data: bytes
    media_type: str


@dataclass
class DemoAssets:
    """The page with its asset links filled in, and the assets under content-hashed names."""

    html: bytes = b""
    assets: dict[str, Asset] = field(default_factory=dict)
    viewer_installed: bool = False

    @classmethod
    def load(cls) -> "DemoAssets":
        built = cls()
        sources = {"demo.js": STATIC / "demo.js", "demo.css": STATIC / "demo.css"}
        if VIEWER.is_file():
            sources["model-viewer.js"] = VIEWER
            built.viewer_installed = True
        else:
            log.warning("demo page: the 3D viewer is not installed (run `make install`, which needs npm)")
        urls = {}
        for name, path in sources.items():
            data = path.read_bytes()
            stem, suffix = name.rsplit(".", 1)
            hashed = f"{stem}.{hashlib.sha256(data).hexdigest()[:16]}.{suffix}"
            built.assets[hashed] = Asset(data, MEDIA_TYPES["." + suffix])
            urls[name] = f"/demo/assets/{hashed}"
        lines = []
        for line in (STATIC / "index.html").read_text(encoding="utf-8").splitlines():
            if 'data-vendor="model-viewer"' in line and not built.viewer_installed:
                continue
            for name, url in urls.items():
                line = line.replace("{{" + name + "}}", url)
            lines.append(line)
        built.html = ("\n".join(lines) + "\n").encode()
        return built


def _assets(state: State) -> DemoAssets:
    assets = state.get("demo_assets")
    if assets is None:
        assets = state.demo_assets = DemoAssets.load()
    return assets


@get("/", opt=PUBLIC, include_in_schema=False)
async def root() -> Redirect:
    return Redirect("/demo")


@get("/demo", opt=PUBLIC, media_type="text/html", summary="The demo page", tags=["demo"])
async def demo_page(state: State) -> Response[bytes]:
    return Response(_assets(state).html, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@get("/demo/assets/{name:str}", opt=PUBLIC, summary="The demo page's content-hashed assets", tags=["demo"])
async def demo_asset(name: FromPath[str], state: State) -> Response[bytes]:
    asset = _assets(state).assets.get(name)
    if asset is None:
        raise NotFoundException("no such asset")
    return Response(
        asset.data,
        media_type=asset.media_type,
        headers={"Cache-Control": ASSET_CACHE, "X-Content-Type-Options": "nosniff"},
    )


DEMO_ROUTES = [root, demo_page, demo_asset]
