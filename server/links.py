"""Signed job links: short-lived URLs a browser may use without the API key.

The web app's backend submits with the key and hands its browser only these links,
which work where no header can be set (``EventSource``, ``<img>``, a glTF viewer's
``src``). Each one is an HMAC over (job, file, expiry), so it opens that one file of
that one job until it expires, and nothing else.

The token is one query parameter, ``sig=<expiry unix seconds>.<base64url HMAC-SHA256>``:
one parameter so the OpenAPI document can describe it as an API-key security scheme.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Callable

from lift3d.errors import LinkSignatureInvalid
from lift3d.settings import ServerSettings

SIGNATURE_PARAM = "sig"
# The files a link can open, by the last segment of their routes.
EVENTS = "events"
SIGNABLE = (EVENTS, "model.glb", "views.png")


class LinkSigner:
    def __init__(self, secret: bytes, ttl_seconds: float, clock: Callable[[], float] = time.time) -> None:
        if not secret:
            raise ValueError("a link secret is needed")
        self._secret = secret
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> "LinkSigner":
        # Unset: random per process. Links then end with the process, which is safe, only less handy.
        secret = settings.link_secret.encode() if settings.link_secret else secrets.token_bytes(32)
        return cls(secret, settings.link_ttl_seconds)

    def _mac(self, job_id: str, resource: str, expires: int) -> str:
        message = f"lift3d-link-v1\n{job_id}\n{resource}\n{expires}".encode()
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def expires_at(self) -> int:
        return int(self._clock() + self.ttl_seconds)

    def token(self, job_id: str, resource: str, expires: int) -> str:
        return f"{expires}.{self._mac(job_id, resource, expires)}"

    def url(self, path: str, job_id: str, resource: str, expires: int) -> str:
        return f"{path}?{SIGNATURE_PARAM}={self.token(job_id, resource, expires)}"

    def verify(self, job_id: str, resource: str, token: str) -> int:
        """The token's expiry, or ``LinkSignatureInvalid`` (403) for a wrong, tampered, expired or cross-job token."""
        expires_text, _, mac = token.partition(".")
        if not (expires_text.isascii() and expires_text.isdigit() and len(expires_text) <= 12 and mac):
            raise LinkSignatureInvalid("the link's signature is malformed")
        expires = int(expires_text)
        # Compare first, so a forged link learns nothing from whether it also expired.
        if not hmac.compare_digest(mac.encode(), self._mac(job_id, resource, expires).encode()):
            raise LinkSignatureInvalid("the link's signature is not valid for this job and file")
        if self._clock() > expires:
            raise LinkSignatureInvalid("the link has expired; ask for the job again for fresh links")
        return expires
