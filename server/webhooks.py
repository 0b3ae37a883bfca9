"""Signed webhooks: tell the web app a job ended, without ever sending image bytes.

Targets are checked against an operator allow-list at submission (a leaked API key
must not turn the server into an SSRF proxy), deliveries follow no redirects (a
redirect would leave the allow-list), and each body is signed::

    X-Lift3d-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

Receivers check it with :func:`verify_signature` (see docs/data-lifecycle.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from typing import Any, Callable
import httpx
import msgspec

from lift3d.settings import StorageSettings
from lift3d.errors import WebhookNotAllowed
from server.jobstore import JobRecord, JobStore
from server.schemas import VIEWS_FILE, job_links
from server.urls import RefusedUrl, allowed_by, normalise_url

log = logging.getLogger("lift3d.webhooks")

SIGNATURE_HEADER = "X-Lift3d-Signature"
EVENT_HEADER = "X-Lift3d-Event"
# Worth another try: the receiver may be restarting or shedding load.
_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def validate_webhook_url(url: str, allowlist: tuple[str, ...] | list[str]) -> str:
    """The normal form of ``url`` (server/urls.py) when it may receive webhooks, else WebhookNotAllowed (422).

    An allow-list entry is a URL prefix such as ``https://app.example.com/hooks/``;
    the normalised target must have the same scheme, host and port, and a path under
    the entry's path by whole segments. Matching is structural, on the URL that will
    be sent, so ``https://app.example.com.evil.net`` and
    ``https://app.example.com/hooks/../evil`` do not match. An empty allow-list
    disables webhooks.
    """
    if not allowlist:
        raise WebhookNotAllowed("webhooks are disabled on this server (no LIFT3D_WEBHOOK_ALLOWLIST)")
    try:
        target = normalise_url(url)
    except RefusedUrl as refused:
        raise WebhookNotAllowed(f"webhook_url is refused: {refused}") from None
    if not allowed_by(target, allowlist):
        raise WebhookNotAllowed("webhook_url is not on this server's allow-list")
    return str(target)


def check_webhook_request(url: str | None, settings: StorageSettings) -> str | None:
    """Submission-time check of an optional ``webhook_url``: its normal form, the one stored and sent (422 on any problem)."""
    if url is None or url == "":
        return None
    normal = validate_webhook_url(url, settings.webhook_allowlist)
    if not settings.webhook_secret:
        raise WebhookNotAllowed("webhooks need a signing secret on this server (LIFT3D_WEBHOOK_SECRET)")
    return normal


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The value of the X-Lift3d-Signature header for ``body``."""
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify_signature(
    secret: str,
    header: str | None,
    body: bytes,
    tolerance_seconds: float = 300,
    now: float | None = None,
) -> bool:
    """True when ``header`` is a valid X-Lift3d-Signature for the raw request ``body``.

    For receivers: pass the body exactly as received (before any JSON parsing). It
    fails for a wrong secret, an altered body or timestamp, and a timestamp more than
    ``tolerance_seconds`` away from ``now`` (replay protection). Several ``v1=``
    entries are accepted, any of which may match.
    """
    if not secret or not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_seconds:
        return False
    expected = _digest(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


def webhook_payload(
    record: JobRecord, base_url: str = "", downloads: dict[str, str] | None = None
) -> dict[str, Any]:
    """What a receiver gets: identifiers, status and links (presigned ``*_download`` URLs when the
    store allows them). Never image bytes or options."""
    succeeded = record.status == "succeeded"
    links = msgspec.to_builtins(
        job_links(record.id, succeeded and VIEWS_FILE in record.artifacts, base_url, downloads=downloads)
    )
    if not succeeded:
        links.pop("model", None)
    return {
        "type": "job.finished",
        "id": record.id,
        "status": record.status,
        "error": {"code": record.error_code} if record.error_code else None,
        "finished_at": record.finished_at,
        "expires_at": record.expires_at,
        "links": {name: url for name, url in links.items() if url is not None},
    }


class WebhookNotifier:
    """Delivers job-ended webhooks in the background with bounded retries.

    ``schedule(job_id)`` is called from the event loop once a job's final state is
    stored. The outcome lands on the job record (``webhook_status`` delivered or
    failed, ``webhook_attempts``, ``webhook_error``).
    """

    def __init__(
        self,
        settings: StorageSettings,
        store: JobStore,
        *,
        client: httpx.AsyncClient | None = None,
        base_url: str = "",
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.store = store
        self.base_url = base_url
        self._client = client
        self._owns_client = client is None
        self._sleep = sleep
        self._tasks: set[asyncio.Task[None]] = set()
        # Storage sets this: presigned result URLs per artifact name (empty when downloads go through us).
        self.download_links: Callable[[JobRecord], dict[str, str]] | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # No redirects: a 3xx could point anywhere, outside the allow-list.
            self._client = httpx.AsyncClient(
                timeout=self.settings.webhook_timeout_seconds, follow_redirects=False, trust_env=False
            )
        return self._client

    def schedule(self, job_id: str) -> asyncio.Task[None] | None:
        """Start delivery for a job that has a webhook_url; None when it has none."""
        record = self.store.get(job_id)
        if record is None or not record.webhook_url:
            return None
        task = asyncio.get_running_loop().create_task(self.deliver(record), name=f"webhook-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based): doubling, capped."""
        delay = self.settings.webhook_backoff_seconds * (2 ** (attempt - 1))
        return min(delay, self.settings.webhook_backoff_max_seconds)

    async def deliver(self, record: JobRecord) -> bool:
        """POST the signed payload until a 2xx, a permanent refusal, or the attempt limit."""
        if not record.webhook_url:
            return False
        try:
            # Again at delivery: the allow-list may have shrunk since, and records from older versions hold raw URLs.
            url = httpx.URL(validate_webhook_url(record.webhook_url, self.settings.webhook_allowlist))
        except WebhookNotAllowed:
            self.store.update(record.id, webhook_status="failed", webhook_error="not_allowed")
            log.warning("webhook for job %s not sent: its URL is no longer allowed", record.id)
            return False
        downloads = self.download_links(record) if self.download_links is not None else None
        body = msgspec.json.encode(webhook_payload(record, self.base_url, downloads))
        attempts = max(1, self.settings.webhook_max_attempts)
        self.store.update(record.id, webhook_status="pending")
        error = ""
        for attempt in range(1, attempts + 1):
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "lift3d-webhooks/1",
                EVENT_HEADER: "job.finished",
                # Signed per attempt, so a late retry still carries a fresh timestamp.
                SIGNATURE_HEADER: sign(self.settings.webhook_secret, body),
            }
            retry = True
            try:
                response = await self._http().post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}"
            else:
                if 200 <= response.status_code < 300:
                    self.store.update(record.id, webhook_status="delivered", webhook_attempts=attempt, webhook_error=None)
                    log.info("webhook for job %s delivered (attempt %d)", record.id, attempt)
                    return True
                error = f"HTTP {response.status_code}"
                retry = response.status_code in _RETRYABLE_STATUS
            self.store.update(record.id, webhook_attempts=attempt, webhook_error=error)
            if not retry or attempt == attempts:
                break
            await self._sleep(self.backoff(attempt))
        self.store.update(record.id, webhook_status="failed", webhook_error=error)
        log.warning("webhook for job %s gave up after %d attempt(s): %s", record.id, attempt, error)
        return False

    async def aclose(self, timeout: float = 10.0) -> None:
        """Give pending deliveries ``timeout`` seconds, then cancel them and close the client."""
        pending = list(self._tasks)
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None
