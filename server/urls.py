"""Outbound URLs (webhooks, the RunPod worker's ``image_url``): normalise once, check that, send that.

A check on the text a client sent is not a check on the request that goes out:
``http://allowed/hooks/../evil`` matches the prefix ``/hooks/`` as text, yet an HTTP
client resolves the dot segments and asks for ``/evil``. So every outbound URL is
first put in one normal form (RFC 3986 section 6 plus the host rules browsers and
resolvers apply), the allow-list is compared with that form, and the request is
sent to exactly that form (:func:`normalise_url` is idempotent, so httpx changes
nothing on the way out).

The normal form:

- scheme ``http`` or ``https`` only, lower case; a fragment (``#``), userinfo
  (``user:pw@``), a backslash, whitespace or a control character is refused;
- host lower case, one trailing dot dropped, internationalised names in IDNA
  (``xn--``) form; IPv4 in any spelling a resolver accepts (``2130706433``,
  ``0x7f.1``, ``0177.0.0.1``) becomes dotted-quad; IPv6 is compressed in brackets
  (zone ids refused); a percent-escape in the host is refused;
- the port a number in 1..65535, dropped when it is the scheme's default;
- path escapes of unreserved characters decoded (``%2e`` is ``.``, ``%41`` is
  ``A``), other escapes upper-cased, escapes of ``/``, ``\\`` and control bytes
  refused (receivers disagree on them), characters outside RFC 3986 escaped, dot
  segments removed, an empty path becomes ``/``;
- the query kept, with the same escaping rules but ``%2F`` allowed.

An allow-list entry is a URL prefix (``https://app.example.com/hooks/``), put in
the same form; a URL is within it when scheme, host and port are equal and the
path is the entry's path or below it, by whole segments.
"""

from __future__ import annotations

import ipaddress
import re
import string
from dataclasses import dataclass
from typing import Final, Iterable

import idna

MAX_URL_CHARS: Final = 2048
DEFAULT_PORTS: Final = {"http": 80, "https": 443}

_UNRESERVED: Final = frozenset(string.ascii_letters + string.digits + "-._~")
# pchar minus '%' (escapes are handled apart): unreserved, sub-delims, ':' and '@'.
_PATH_SAFE: Final = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
_QUERY_SAFE: Final = _PATH_SAFE | frozenset("?")
# Escaped bytes refused in a path: '/', '\' and control bytes (each read differently by different servers).
_PATH_REFUSED_BYTES: Final = frozenset({0x2F, 0x5C, 0x7F, *range(0x20)})
_QUERY_REFUSED_BYTES: Final = frozenset({0x7F, *range(0x20)})
_HEX: Final = frozenset(string.hexdigits)
_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMERIC_LABEL: Final = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)")


class RefusedUrl(ValueError):
    """The URL is not one we send requests to; the message says why (never echoes the URL)."""


@dataclass(frozen=True)
class NormalUrl:
    scheme: str
    host: str  # IPv6 in brackets
    port: int
    path: str
    query: str | None = None

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    @property
    def authority(self) -> str:
        return self.host if self.port == DEFAULT_PORTS[self.scheme] else f"{self.host}:{self.port}"

    @property
    def hostname(self) -> str:
        """The host without IPv6 brackets (what a resolver takes)."""
        return self.host[1:-1] if self.host.startswith("[") else self.host

    def __str__(self) -> str:
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{self.authority}{self.path}{query}"

    def within(self, prefix: "NormalUrl") -> bool:
        """Same origin, and the path is the prefix's path or below it by whole segments."""
        if self.origin != prefix.origin:
            return False
        if prefix.path.endswith("/"):
            return self.path.startswith(prefix.path)
        return self.path == prefix.path or self.path.startswith(prefix.path + "/")


def normalise_url(url: str) -> NormalUrl:
    """The normal form of ``url`` (see the module docstring), or RefusedUrl."""
    if len(url) > MAX_URL_CHARS:
        raise RefusedUrl(f"the URL is longer than {MAX_URL_CHARS} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise RefusedUrl("the URL holds whitespace or control characters")
    if "\\" in url:
        raise RefusedUrl("the URL holds a backslash")
    if "#" in url:
        raise RefusedUrl("the URL has a fragment")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        raise RefusedUrl("only http and https URLs are allowed")
    split = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, tail = rest[:split], rest[split:]
    path, has_query, query = tail.partition("?")
    if "@" in authority:
        raise RefusedUrl("the URL carries credentials (userinfo)")
    host, port = _split_authority(authority, scheme)
    return NormalUrl(
        scheme=scheme,
        host=_normal_host(host),
        port=port,
        path=_normal_path(path),
        query=_escape(query, _QUERY_SAFE, _QUERY_REFUSED_BYTES) if has_query and query else None,
    )


def allowed_by(url: NormalUrl, allowlist: Iterable[str]) -> bool:
    """True when ``url`` is within one allow-list entry (entries that are not valid URLs allow nothing)."""
    for entry in allowlist:
        try:
            prefix = normalise_url(entry)
        except RefusedUrl:
            continue
        if url.within(prefix):
            return True
    return False


# -- the parts -----------------------------------------------------------------------


def _split_authority(authority: str, scheme: str) -> tuple[str, int]:
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise RefusedUrl("the URL has an unclosed IPv6 address")
        host, after = authority[: end + 1], authority[end + 1 :]
        if after and not after.startswith(":"):
            raise RefusedUrl("the URL has text after its IPv6 address")
        port_text = after[1:] if after else ""
    else:
        host, _, port_text = authority.partition(":")
    if not host:
        raise RefusedUrl("the URL has no host")
    if port_text == "":
        return host, DEFAULT_PORTS[scheme]
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RefusedUrl("the URL's port is not a number in 1..65535")
    return host, int(port_text)


def _normal_host(host: str) -> str:
    if "%" in host:
        raise RefusedUrl("the URL's host is percent-encoded or has an IPv6 zone")
    if host.startswith("["):
        try:
            address = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise RefusedUrl("the URL's IPv6 address is not valid") from None
        return f"[{address.compressed}]"
    if host.endswith("."):
        host = host[:-1]
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            raise RefusedUrl("the URL's host is not a valid internationalised name") from None
    host = host.lower()
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        return _ipv4(labels)
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise RefusedUrl("the URL's host is not a valid name")
    return host


def _ipv4(labels: list[str]) -> str:
    """Dotted-quad of an IPv4 host in any form a resolver accepts (1 to 4 parts, decimal, octal, hex)."""
    if len(labels) > 4:
        raise RefusedUrl("the URL's host is not a valid IPv4 address")
    numbers = []
    for label in labels:
        if not _NUMERIC_LABEL.fullmatch(label):
            raise RefusedUrl("the URL's host is not a valid IPv4 address")
        if label[:2] in ("0x", "0X"):
            numbers.append(int(label[2:] or "0", 16))
        elif len(label) > 1 and label.startswith("0"):
            if any(ch in "89" for ch in label):
                raise RefusedUrl("the URL's host is not a valid IPv4 address")
            numbers.append(int(label, 8))
        else:
            numbers.append(int(label))
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        raise RefusedUrl("the URL's host is not a valid IPv4 address")
    value = last
    for index, number in enumerate(leading):
        value += number << (8 * (3 - index))
    return str(ipaddress.IPv4Address(value))


def _escape(text: str, safe: frozenset[str], refused: frozenset[int]) -> str:
    """Decode escapes of unreserved characters, upper-case the rest, escape what is not ``safe``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "%":
            pair = text[i + 1 : i + 3]
            if len(pair) != 2 or not set(pair) <= _HEX:
                raise RefusedUrl("the URL has a malformed percent-escape")
            byte = int(pair, 16)
            if byte in refused:
                raise RefusedUrl("the URL escapes a separator or control character")
            out.append(chr(byte) if chr(byte) in _UNRESERVED else f"%{byte:02X}")
            i += 3
            continue
        out.append(ch if ch in safe else "".join(f"%{b:02X}" for b in ch.encode("utf-8")))
        i += 1
    return "".join(out)


def _normal_path(path: str) -> str:
    escaped = _escape(path, _PATH_SAFE, _PATH_REFUSED_BYTES)
    segments = escaped.split("/")
    # "..;x" is ".." to some servlet containers: no dot segment may carry parameters.
    if any(seg.split(";", 1)[0] in (".", "..") and ";" in seg for seg in segments):
        raise RefusedUrl("the URL has a dot segment with parameters")
    return _remove_dot_segments(escaped) or "/"


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, on a path that starts with '/' (or is empty)."""
    output: list[str] = []
    segments = path.split("/")[1:] if path.startswith("/") else path.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "..":
            if output:
                output.pop()
            if last:
                output.append("")
        elif segment == ".":
            if last:
                output.append("")
        else:
            output.append(segment)
    return "/" + "/".join(output) if output else ("/" if path else "")
