"""Fetching client-named URLs (the RunPod worker's image_url): public addresses only, every hop re-checked."""

from __future__ import annotations

import ipaddress
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import httpx
import pytest

from server.fetch import FetchFailed, FetchRefused, FetchTooLarge, fetch, is_public

PUBLIC_IP = "93.184.216.34"
NAMES = {
    "img.example": [PUBLIC_IP],
    "cdn.example": ["2606:2800:220:1:248:1893:25c8:1946"],
    "internal.example": ["10.1.2.3"],
    "mixed.example": [PUBLIC_IP, "127.0.0.1"],
    "metadata.example": ["169.254.169.254"],
}


def fake_resolver(host: str, port: int) -> list[Any]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        return [ipaddress.ip_address(a) for a in NAMES.get(host, [])]


class Remote:
    """An httpx transport standing in for the internet: scripted answers per path, requests recorded."""

    def __init__(self, routes: dict[str, httpx.Response]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.routes.get(request.url.path, httpx.Response(404))

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self), follow_redirects=False)


def redirect(location: str) -> httpx.Response:
    return httpx.Response(302, headers={"Location": location})


def _fetch(remote: Remote, url: str, **kwargs: Any) -> bytes:
    kwargs.setdefault("max_bytes", 1000)
    return fetch(url, timeout_s=5, resolver=fake_resolver, client=remote.client(), **kwargs)


REFUSED = [
    "http://127.0.0.1/a.png", "http://127.1/a.png", "http://2130706433/a.png", "http://0x7f.0.0.1/a.png",
    "http://0177.0.0.1/a.png", "http://0.0.0.0/a.png", "http://10.0.0.1/a.png", "http://172.16.5.4/a.png",
    "http://192.168.1.1/a.png", "http://100.64.0.1/a.png", "http://169.254.169.254/latest/meta-data",
    "http://224.0.0.1/a.png", "http://255.255.255.255/a.png", "http://[::1]/a.png", "http://[::]/a.png",
    "http://[::ffff:127.0.0.1]/a.png", "http://[::ffff:7f00:1]/a.png", "http://[fe80::1]/a.png",
    "http://[fc00::1]/a.png", "http://[ff02::1]/a.png", "http://[2002:7f00:1::]/a.png",
    "http://internal.example/a.png", "http://mixed.example/a.png", "http://metadata.example/",
    "http://INTERNAL.example./a.png", "file:///etc/passwd", "ftp://img.example/a.png", "gopher://img.example/",
    "http://user:pw@img.example/a.png", "http://img.example:80@127.0.0.1/a.png", "http://img.example/a.png#x",
    "http://img.example\\@127.0.0.1/", "http://img.example%2F@127.0.0.1/", "http://[fe80::1%25eth0]/",
]


@pytest.mark.parametrize("url", REFUSED)
def test_non_public_targets_are_refused_before_any_request(url: str) -> None:
    remote = Remote({"/a.png": httpx.Response(200, content=b"img")})
    with pytest.raises(FetchRefused):
        _fetch(remote, url)
    assert remote.requests == []


def test_a_public_host_is_fetched_at_the_checked_address_with_its_name() -> None:
    remote = Remote({"/a/b.png": httpx.Response(200, content=b"image-bytes")})
    assert _fetch(remote, "https://IMG.example./a/x/../b.png") == b"image-bytes"
    (request,) = remote.requests
    assert request.url.host == PUBLIC_IP and request.url.scheme == "https" and request.url.path == "/a/b.png"
    assert request.headers["host"] == "img.example"
    assert request.extensions["sni_hostname"] == "img.example"
    assert _fetch(remote, "http://cdn.example:8080/a/b.png") == b"image-bytes"
    assert remote.requests[-1].url.host == "2606:2800:220:1:248:1893:25c8:1946"
    assert remote.requests[-1].headers["host"] == "cdn.example:8080"


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.1/secret", "http://localhost:8000/", "http://[::1]/", "http://2130706433/",
        "http://internal.example/x", "http://169.254.169.254/latest/meta-data", "file:///etc/passwd",
        "http://img.example@10.0.0.1/",
    ],
)
def test_every_redirect_hop_is_checked(location: str) -> None:
    remote = Remote({"/start.png": redirect(location)})
    resolver_names = dict(NAMES, localhost=["127.0.0.1"])

    def resolver(host: str, port: int) -> list[Any]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            return [ipaddress.ip_address(a) for a in resolver_names.get(host, [])]

    with pytest.raises(FetchRefused):
        fetch("http://img.example/start.png", max_bytes=1000, timeout_s=5, resolver=resolver, client=remote.client())
    assert [r.url.path for r in remote.requests] == ["/start.png"]


def test_public_redirects_are_followed_a_bounded_number_of_times() -> None:
    remote = Remote({"/a": redirect("/b"), "/b": redirect("https://cdn.example/c.png"), "/c.png": httpx.Response(200, content=b"ok")})
    assert _fetch(remote, "http://img.example/a") == b"ok"
    assert [r.url.path for r in remote.requests] == ["/a", "/b", "/c.png"]
    loop = Remote({"/loop": redirect("/loop")})
    with pytest.raises(FetchRefused, match="redirects"):
        _fetch(loop, "http://img.example/loop")
    assert len(loop.requests) == 6


def test_the_body_is_capped_and_errors_are_typed() -> None:
    remote = Remote({"/big": httpx.Response(200, content=b"x" * 2000), "/gone": httpx.Response(404)})
    with pytest.raises(FetchTooLarge):
        _fetch(remote, "http://img.example/big")
    with pytest.raises(FetchFailed, match="404"):
        _fetch(remote, "http://img.example/gone")
    with pytest.raises(FetchFailed):
        _fetch(remote, "http://unknown.example/a")


def test_is_public() -> None:
    assert is_public(ipaddress.ip_address(PUBLIC_IP))
    assert is_public(ipaddress.ip_address("2606:4700::1111"))
    for address in ("127.0.0.1", "10.0.0.1", "::1", "::ffff:10.0.0.1", "fe80::1", "ff02::1", "0.0.0.0", "240.0.0.1"):
        assert not is_public(ipaddress.ip_address(address)), address


@pytest.fixture()
def loopback_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith("/public/hop"):
                self.send_response(302)
                self.send_header("Location", "/private/secret")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = b"secret" if self.path.startswith("/private") else b"fine"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_allow_list_lets_one_loopback_prefix_through_and_no_more(loopback_server: str) -> None:
    allow = (f"{loopback_server}/public/",)
    assert fetch(f"{loopback_server}/public/a.png", max_bytes=100, timeout_s=5, allowlist=allow) == b"fine"
    with pytest.raises(FetchRefused):
        fetch(f"{loopback_server}/public/hop", max_bytes=100, timeout_s=5, allowlist=allow)
    with pytest.raises(FetchRefused):
        fetch(f"{loopback_server}/public/../private/secret", max_bytes=100, timeout_s=5, allowlist=allow)
    with pytest.raises(FetchRefused):
        fetch(f"{loopback_server}/public/%2e%2e/private/secret", max_bytes=100, timeout_s=5, allowlist=allow)


def test_redirect_hops_share_one_time_budget() -> None:
    """Each hop may only wait for what is left of the whole budget, not a fresh timeout."""
    import httpx as _httpx

    from server.fetch import FetchFailed, fetch

    timeouts: list[float] = []

    def handler(request: _httpx.Request) -> _httpx.Response:
        timeouts.append(request.extensions["timeout"]["connect"])
        import time as _time

        _time.sleep(0.3)
        return _httpx.Response(302, headers={"location": f"/hop{len(timeouts)}"})

    client = _httpx.Client(transport=_httpx.MockTransport(handler), follow_redirects=False)
    with pytest.raises(FetchFailed, match="within"):
        fetch("http://images.example/a.png", max_bytes=1000, timeout_s=1.0, resolver=lambda host, port: [ipaddress.ip_address("93.184.216.34")], client=client)
    assert 2 <= len(timeouts) <= 4
    assert all(later < earlier for earlier, later in zip(timeouts, timeouts[1:]))
    assert timeouts[0] <= 1.0
