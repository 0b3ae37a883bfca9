"""Bearer API keys: several at once (rotation), compared in constant time.

With no key configured the server does not run open: it generates one key into
the data directory (mode 0600) and logs the file's path, never the key.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

from lift3d.settings import Settings
from server.links import SIGNATURE_PARAM, LinkSigner

log = logging.getLogger("lift3d.server")

GENERATED_KEY_FILE = "api_key"
# Route handlers marked with this opt are reachable without a key (probes, the demo page, the docs).
PUBLIC = {"public": True}


def signable(resource: str) -> dict[str, str]:
    """The opt of a job route that also opens with a signed link (``server.links``) for ``resource``."""
    return {"signed": resource}


class ApiKeys:
    def __init__(self, keys: tuple[str, ...]) -> None:
        if not keys:
            raise ValueError("at least one API key is needed")
        self._keys = tuple(key.encode() for key in keys)

    def accepts(self, presented: str) -> bool:
        candidate = presented.encode()
        # Compare against every key so timing reveals neither which key nor how many matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        return matched


def generated_key_path(settings: Settings) -> Path:
    return settings.storage.data_path / GENERATED_KEY_FILE


def resolve_api_keys(settings: Settings) -> ApiKeys:
    """The configured keys, or the generated one from the data directory."""
    configured = tuple(key for key in settings.server.api_keys if key)
    if configured:
        return ApiKeys(configured)
    path = generated_key_path(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL + 0600: created private, never readable by others even for an instant.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    log.warning("no LIFT3D_API_KEYS configured; using the generated API key stored in %s", path)
    return ApiKeys((path.read_text().strip(),))


def bearer_token(connection: ASGIConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def make_auth_guard(keys: ApiKeys, signer: LinkSigner):
    def require_api_key(connection: ASGIConnection, route_handler: BaseRouteHandler) -> None:
        if route_handler.opt.get("public"):
            return
        token = bearer_token(connection)
        if token is not None and keys.accepts(token):
            return
        resource = route_handler.opt.get("signed")
        signature = connection.query_params.get(SIGNATURE_PARAM)
        if resource and signature is not None:
            # The link is the credential: wrong, expired or another job's is 403, not 401.
            # The handler caps what it hands on at this expiry: a link never mints a longer-lived one.
            connection.state.link_expires = signer.verify(connection.path_params["job_id"], resource, signature)
            return
        raise NotAuthorizedException("a valid API key is required (Authorization: Bearer <key>)")

    return require_api_key
