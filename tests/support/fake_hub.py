"""A tiny HTTP server on 127.0.0.1 that plays a Hugging Face Hub and a plain file host.

Enough of the Hub's protocol for ``hf_hub_download`` and ``HfApi.model_info``:
``HEAD/GET /{repo}/resolve/{revision}/{file}`` (commit and ETag headers, byte
ranges) and ``GET /api/models/{repo}/revision/{revision}``. Plain files live under
``/files/{name}``. Every request is recorded, and a file can be set to cut the
connection after N bytes on its first GET to simulate an interrupted download.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Served:
    body: bytes
    lfs: bool = True  # LFS files carry their sha256 as the ETag, like the Hub
    cut_first_get_after: int | None = None
    # Seconds to wait before sending the body (a slow download someone can watch).
    delay_seconds: float = 0.0
    gets: int = 0


@dataclass
class Request:
    method: str
    path: str
    range: str | None


@dataclass
class FakeHub:
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    repos: dict[str, dict[str, Served]] = field(default_factory=dict)
    files: dict[str, Served] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    url: str = ""

    def add_repo_file(self, repo: str, name: str, body: bytes, **options: Any) -> None:
        self.repos.setdefault(repo, {})[name] = Served(body, **options)

    def add_file(self, name: str, body: bytes, **options: Any) -> str:
        self.files[name] = Served(body, **options)
        return f"{self.url}/files/{name}"

    def lookup(self, path: str) -> Served | None:
        if path.startswith("/files/"):
            return self.files.get(path.removeprefix("/files/"))
        for repo, entries in self.repos.items():
            prefix = f"/{repo}/resolve/"
            if path.startswith(prefix):
                revision, _, name = path.removeprefix(prefix).partition("/")
                if revision in (self.commit, "main"):
                    return entries.get(name)
        return None

    def model_info(self, path: str) -> dict[str, Any] | None:
        for repo, entries in self.repos.items():
            if path.startswith(f"/api/models/{repo}"):
                siblings = []
                for name, served in entries.items():
                    sibling: dict[str, Any] = {"rfilename": name, "size": len(served.body), "blobId": "0" * 40}
                    if served.lfs:
                        digest = hashlib.sha256(served.body).hexdigest()
                        sibling["lfs"] = {"size": len(served.body), "sha256": digest, "pointerSize": 134}
                    siblings.append(sibling)
                return {"id": repo, "modelId": repo, "sha": self.commit, "siblings": siblings, "private": False}
        return None


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def _record(self) -> None:
            hub.requests.append(Request(self.command, self.path.split("?")[0], self.headers.get("Range")))

        def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
            self._record()
            self._serve(head=True)

        def do_GET(self) -> None:  # noqa: N802
            self._record()
            path = self.path.split("?")[0]
            info = hub.model_info(path)
            if info is not None:
                payload = json.dumps(info).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            served = hub.lookup(self.path.split("?")[0])
            if served is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.send_header("X-Error-Code", "EntryNotFound")
                self.end_headers()
                return
            body = served.body
            start = 0
            requested = self.headers.get("Range")
            if requested and requested.startswith("bytes="):
                start = int(requested.removeprefix("bytes=").split("-")[0])
            if start >= len(body) and start > 0:
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            digest = hashlib.sha256(body).hexdigest()
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(body) - start))
            self.send_header("Accept-Ranges", "bytes")
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("X-Repo-Commit", hub.commit)
            if served.lfs:
                self.send_header("X-Linked-Etag", f'"{digest}"')
                self.send_header("X-Linked-Size", str(len(body)))
            self.send_header("ETag", f'"{digest[:40]}"' if not served.lfs else f'"{digest}"')
            self.end_headers()
            if head:
                return
            served.gets += 1
            time.sleep(served.delay_seconds)
            chunk = body[start:]
            if served.gets == 1 and served.cut_first_get_after is not None:
                # Promise the whole body, send part of it, hang up: an interrupted download.
                self.wfile.write(chunk[: served.cut_first_get_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(chunk)

    return Handler


class FakeHubServer:
    def __init__(self) -> None:
        self.hub = FakeHub()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.hub))
        self.hub.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self.hub

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
