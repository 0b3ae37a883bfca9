"""The normal form of outbound URLs (server/urls.py): idempotent, and what httpx sends is what was checked."""

from __future__ import annotations

import posixpath
from urllib.parse import unquote

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.urls import RefusedUrl, allowed_by, normalise_url

ALLOW = ("https://allowed.example/hooks/",)


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("HTTP://Allowed.Example:80/a", "http://allowed.example/a"),
        ("https://allowed.example:443", "https://allowed.example/"),
        ("https://allowed.example./hooks/./a/../b", "https://allowed.example/hooks/b"),
        ("https://allowed.example/hooks/%61%7E%2D", "https://allowed.example/hooks/a~-"),
        ("https://allowed.example/hooks/%c3%a9", "https://allowed.example/hooks/%C3%A9"),
        ("https://allowed.example/hooks/é", "https://allowed.example/hooks/%C3%A9"),
        ("https://bücher.example/", "https://xn--bcher-kva.example/"),
        ("http://[0:0:0:0:0:0:0:1]:8080/", "http://[::1]:8080/"),
        ("http://3232235777/", "http://192.168.1.1/"),
        ("http://0xc0.0xa8.1.1/", "http://192.168.1.1/"),
        ("http://192.168.257/", "http://192.168.1.1/"),
        ("https://allowed.example/hooks?", "https://allowed.example/hooks"),
        ("https://allowed.example/hooks?a=%2f&b=%41", "https://allowed.example/hooks?a=%2F&b=A"),
    ],
)
def test_normal_forms(url: str, normal: str) -> None:
    assert str(normalise_url(url)) == normal


@pytest.mark.parametrize(
    "url",
    [
        "http://allowed:80@evil/", "http://user@allowed/", "http://allowed/#", "ftp://allowed/", "allowed/hooks",
        "http:/allowed/", "http://allowed/a%2fb", "http://allowed/a%5Cb", "http://allowed/a\\b", "http://allowed/%00",
        "http://allowed/%zz", "http://allowed/%4", "http://al%6Cowed/", "http://[::1/", "http://[::1]x/",
        "http://allowed:0/", "http://allowed:65536/", "http://allowed:8o/", "http://allowed:+80/", "http://a_/x y",
        "http://300.1.1.1/", "http://1.2.3.4.5/", "http://08.1.1.1/", "http://[fe80::1%25eth0]/", "http:// allowed/",
        "http://allowed/..;/x", "http://" + "a" * 2100 + "/", "http://-allowed/", "http://allowed..example/",
    ],
)
def test_refused(url: str) -> None:
    with pytest.raises(RefusedUrl):
        normalise_url(url)


SEGMENTS = st.sampled_from(
    ["hooks", "evil", "..", ".", "%2e", "%2E%2e", ".%2E", "a", "%41", "%7e", "~", "é", "%C3%A9", "", "x;y", "h%6Foks"]
)


def _server_view(path: str) -> str:
    """How a receiver that decodes unreserved escapes and resolves dot segments reads a path."""
    decoded = unquote(path, errors="strict")
    resolved = posixpath.normpath(decoded) if decoded not in ("", "/") else "/"
    return resolved + ("/" if decoded.endswith(("/", "/.", "/..")) and resolved != "/" else "")


@settings(max_examples=300, deadline=None)
@given(st.lists(SEGMENTS, min_size=0, max_size=8), st.booleans())
def test_what_is_checked_is_what_is_sent(segments: list[str], trailing: bool) -> None:
    url = "https://Allowed.Example/" + "/".join(segments) + ("/" if trailing else "")
    try:
        normal = normalise_url(url)
    except RefusedUrl:
        return
    text = str(normal)
    assert str(normalise_url(text)) == text  # idempotent
    sent = httpx.URL(text)
    assert sent.raw_path.decode() == normal.path  # httpx changes nothing on the way out
    assert "/../" not in normal.path + "/" and "/./" not in normal.path + "/"
    # Within the allow-list exactly when the receiver's own reading of the path is under /hooks/.
    within = allowed_by(normal, ALLOW)
    assert within == _server_view(normal.path).startswith("/hooks/")
