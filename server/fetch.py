"""Fetching a client-named URL (the RunPod worker's ``image_url``) without becoming an SSRF proxy.

Each hop is put in the normal form of server/urls.py, its host is resolved once,
and every address it resolves to must be public (not private, loopback,
link-local, multicast, unspecified, reserved or shared) unless the URL is within
an operator allow-list. The request then goes to the address that was checked
(the host is pinned: a second lookup could answer differently), with the name in
``Host`` and in TLS SNI, so certificates are still checked against the name.
Redirects are followed by hand, each hop checked the same way; the body is read
under a byte cap and a total deadline.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Callable, Final, Iterable
from urllib.parse import urljoin

import httpx

from pipeline.wipe import WipedBuffer
from server.uploads import ImageBytes
from server.urls import NormalUrl, RefusedUrl, allowed_by, normalise_url

MAX_REDIRECTS: Final = 5
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[IPAddress]]


class FetchRefused(Exception):
    """The URL (or a hop it redirects to) may not be fetched; the message says why."""


class FetchFailed(Exception):
    """The fetch was allowed but did not succeed (network error, HTTP error status)."""


class FetchTooLarge(Exception):
    pass


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise FetchFailed(f"the host does not resolve ({type(error).__name__})") from None
    # Scope ids ("fe80::1%eth0") are cut off: the address itself is what is checked.
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def is_public(address: IPAddress) -> bool:
    """Routable on the internet: not private, loopback, link-local, multicast, unspecified or reserved."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if mapped is not None and not is_public(mapped):
            return False
    return address.is_global and not (
        address.is_multicast or address.is_loopback or address.is_link_local or address.is_unspecified or address.is_reserved
    )


def _pinned(url: NormalUrl, address: IPAddress) -> httpx.URL:
    host = f"[{address.compressed}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
    return httpx.URL(str(url).replace(f"{url.scheme}://{url.authority}", f"{url.scheme}://{host}:{url.port}", 1))


def _checked_address(url: NormalUrl, allowlist: Iterable[str], resolver: Resolver) -> IPAddress:
    addresses = resolver(url.hostname, url.port)
    if not addresses:
        raise FetchFailed("the host resolves to no address")
    if not allowed_by(url, allowlist) and not all(is_public(address) for address in addresses):
        raise FetchRefused("the URL points at a private, loopback, link-local or otherwise non-public address")
    return addresses[0]


def fetch(
    url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    allowlist: Iterable[str] = (),
    resolver: Resolver = resolve,
    client: httpx.Client | None = None,
) -> WipedBuffer:
    """The body at ``url`` (GET), at most ``max_bytes``, within ``timeout_s`` in all."""
    allowlist = tuple(allowlist)
    deadline = time.monotonic() + timeout_s
    own = client is None
    http = client or httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False)
    try:
        try:
            current = normalise_url(url)
        except RefusedUrl as refused:
            raise FetchRefused(str(refused)) from None
        for _ in range(MAX_REDIRECTS + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchFailed(f"no image within {timeout_s:g} s")
            address = _checked_address(current, allowlist, resolver)
            extensions = {"sni_hostname": current.hostname} if current.scheme == "https" else {}
            headers = {"Host": current.authority, "Accept": "image/*"}
            try:
                # Every hop's connect and header wait comes out of the same budget, not a fresh one.
                with http.stream(
                    "GET", _pinned(current, address), headers=headers, extensions=extensions, timeout=remaining
                ) as response:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        try:
                            current = normalise_url(urljoin(str(current), location))
                        except RefusedUrl as refused:
                            raise FetchRefused(f"a redirect was refused: {refused}") from None
                        continue
                    if response.status_code >= 400:
                        raise FetchFailed(f"the server answered HTTP {response.status_code}")
                    return _read_capped(response, max_bytes, deadline)
            except httpx.HTTPError as error:
                raise FetchFailed(f"{type(error).__name__}") from None
        raise FetchRefused(f"more than {MAX_REDIRECTS} redirects")
    finally:
        if own:
            http.close()


def _read_capped(response: httpx.Response, max_bytes: int, deadline: float) -> WipedBuffer:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchTooLarge(f"the body is larger than {max_bytes} bytes")
    # Like an upload: one buffer, zeroed when the job lets go of it (pipeline/wipe.py).
    body = ImageBytes(int(declared) if declared.isdigit() else None)
    for chunk in response.iter_bytes():
        if len(body) + len(chunk) > max_bytes:
            body.wipe()
            raise FetchTooLarge(f"the body is larger than {max_bytes} bytes")
        body.add(chunk)
        if time.monotonic() > deadline:
            body.wipe()
            raise FetchFailed("the download took longer than its deadline")
    return body.take()
