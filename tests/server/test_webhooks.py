"""Webhooks: allow-list (SSRF guard), signatures, delivery with bounded retries."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from server.problems import http_status

from lift3d.settings import StorageSettings
from lift3d.errors import InvalidOption
from server.jobstore import JobRecord, JobStore, new_job_id
from server.webhooks import (
    SIGNATURE_HEADER,
    WebhookNotifier,
    check_webhook_request,
    sign,
    validate_webhook_url,
    verify_signature,
    webhook_payload,
)

ALLOW = ("https://app.example.com/hooks/", "http://127.0.0.1:9000/lift3d")
SECRET = "whsec-test"


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        ("https://app.example.com/hooks/", "https://app.example.com/hooks/"),
        ("https://app.example.com/hooks/job?x=1", "https://app.example.com/hooks/job?x=1"),
        ("https://APP.example.com:443/hooks/a/b", "https://app.example.com/hooks/a/b"),
        ("http://127.0.0.1:9000/lift3d", "http://127.0.0.1:9000/lift3d"),
        ("http://127.0.0.1:9000/lift3d/done", "http://127.0.0.1:9000/lift3d/done"),
        ("http://2130706433:9000/lift3d/%64one", "http://127.0.0.1:9000/lift3d/done"),
        ("https://app.example.com./hooks/x/../y", "https://app.example.com/hooks/y"),
    ],
)
def test_allowed_targets_come_back_normalised(url: str, sent: str) -> None:
    assert validate_webhook_url(url, ALLOW) == sent


@pytest.mark.parametrize(
    "url",
    [
        "https://app.example.com.evil.net/hooks/",  # textual prefix, different host
        "https://app.example.com@evil.net/hooks/",  # credentials trick
        "https://user:pw@app.example.com/hooks/",
        "http://app.example.com/hooks/",  # scheme downgrade
        "https://app.example.com:8443/hooks/",  # other port
        "https://app.example.com/other",
        "https://app.example.com/hooksevil",
        "http://127.0.0.1:9000/lift3devil",
        "http://127.0.0.1:9001/lift3d",
        "http://169.254.169.254/latest/meta-data",
        "file:///etc/passwd",
        "gopher://127.0.0.1:9000/lift3d",
        "https://app.example.com/hooks/\r\nX-Injected: 1",
        "not a url",
        "https://app.example.com:99999/hooks/",
        # The URL that would be sent leaves the allow-list, however it is spelt.
        "https://app.example.com/hooks/../evil",
        "https://app.example.com/hooks/%2e%2e/evil",
        "https://app.example.com/hooks/%2E%2E/evil",
        "https://app.example.com/hooks/.%2e/evil",
        "https://app.example.com/hooks/..%2Fevil",
        "https://app.example.com/hooks/%2e%2e%2fevil",
        "https://app.example.com/hooks/..;/evil",
        "https://app.example.com/hooks/..\\evil",
        "https://app.example.com/hooks/%5c..%5cevil",
        "https://app.example.com:443@evil.net/hooks/",
        "https://app.example.com%2F@evil.net/hooks/",
        "https://app.example.com%2eevil.net/hooks/",
        "https://app.example.com/hooks/#frag",
        "https://app.example.com/hooks/x#",
        "http://127.0.0.1:9000/lift3d/../admin",
        "http://0x7f.0.0.1:9000/lift3d/../admin",
        "http://[::1]:9000/lift3d",
        "http://[::ffff:127.0.0.1]:9000/lift3d",
        "javascript://app.example.com/hooks/",
        "https:app.example.com/hooks/",
        "https:///app.example.com/hooks/",
    ],
)
def test_rejected_targets_are_422(url: str) -> None:
    with pytest.raises(InvalidOption) as info:
        validate_webhook_url(url, ALLOW)
    assert http_status(info.value) == 422 and info.value.code == "webhook_not_allowed"


def test_allowlist_entries_are_normalised_too() -> None:
    allow = ("HTTPS://Hooks.Example.:443/a/./b/", "http://[0:0::1]:9000/x")
    assert validate_webhook_url("https://hooks.example/a/b/c", allow) == "https://hooks.example/a/b/c"
    assert validate_webhook_url("http://[::1]:9000/x/y", allow) == "http://[::1]:9000/x/y"
    with pytest.raises(InvalidOption):
        validate_webhook_url("https://hooks.example/a/c", allow)


def test_delivery_sends_exactly_the_normalised_url(tmp_path: Path) -> None:
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(bytes(request.url.scheme, "ascii") + b"://" + request.url.netloc + request.url.raw_path)
        return httpx.Response(204)

    settings = StorageSettings(webhook_allowlist=ALLOW, webhook_secret=SECRET, webhook_max_attempts=1)
    store = JobStore.in_data_dir(tmp_path)
    url = check_webhook_request("https://APP.example.com/hooks/x/%2e%2E/done%7e?a=%2f", settings)
    assert url == "https://app.example.com/hooks/done~?a=%2F"
    record = _record(store, webhook_url=url)
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    notifier = WebhookNotifier(settings, store, client=client)
    assert asyncio.run(notifier.deliver(record)) is True
    assert seen == [b"https://app.example.com/hooks/done~?a=%2F"]
    # A stored URL the allow-list no longer covers is never sent.
    narrowed = WebhookNotifier(StorageSettings(webhook_allowlist=("https://other.example/",), webhook_secret=SECRET), store, client=client)
    assert asyncio.run(narrowed.deliver(record)) is False
    assert len(seen) == 1 and store.get(record.id).webhook_status == "failed"


def test_empty_allowlist_disables_webhooks() -> None:
    with pytest.raises(InvalidOption):
        validate_webhook_url("https://app.example.com/hooks/", ())


def test_submission_check_needs_a_secret() -> None:
    settings = StorageSettings(webhook_allowlist=ALLOW)
    assert check_webhook_request(None, settings) is None
    with pytest.raises(InvalidOption, match="secret"):
        check_webhook_request("https://app.example.com/hooks/", settings)
    with_secret = StorageSettings(webhook_allowlist=ALLOW, webhook_secret=SECRET)
    assert check_webhook_request("https://app.example.com/hooks/", with_secret)


def test_signature_verifies_and_detects_tampering() -> None:
    body = b'{"id":"abc","status":"succeeded"}'
    header = sign(SECRET, body, timestamp=1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert verify_signature(SECRET, header, body, now=1_700_000_100)
    assert not verify_signature("other-secret", header, body, now=1_700_000_100)
    assert not verify_signature(SECRET, header, body.replace(b"succeeded", b"failed"), now=1_700_000_100)
    digest = header.split("v1=")[1]
    flipped = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    assert not verify_signature(SECRET, f"t=1700000000,v1={flipped}", body, now=1_700_000_100)
    # Moving the timestamp breaks the signature (it is signed too).
    assert not verify_signature(SECRET, f"t=1700000100,v1={digest}", body, now=1_700_000_100)
    for broken in ("", "garbage", "t=abc,v1=00", f"v1={digest}", "t=1700000000"):
        assert not verify_signature(SECRET, broken, body, now=1_700_000_100)


def test_stale_or_future_timestamps_fail() -> None:
    body = b"{}"
    header = sign(SECRET, body, timestamp=1_700_000_000)
    assert verify_signature(SECRET, header, body, now=1_700_000_300)
    assert not verify_signature(SECRET, header, body, now=1_700_000_301)
    assert not verify_signature(SECRET, header, body, now=1_699_999_699)
    assert verify_signature(SECRET, header, body, tolerance_seconds=1000, now=1_700_000_900)


def test_rotating_receivers_accept_any_v1() -> None:
    body = b"{}"
    header = sign(SECRET, body, timestamp=100)
    assert verify_signature(SECRET, f"{header},v1={'0' * 64}", body, now=100)
    assert verify_signature(SECRET, f"t=100,v1={'0' * 64},{header.split(',')[1]}", body, now=100)


def _record(store: JobStore, **fields) -> JobRecord:
    fields.setdefault("webhook_url", "http://127.0.0.1:9000/lift3d/done")
    record = JobRecord(
        id=new_job_id(),
        created_at=1.0,
        retention_seconds=60,
        owner="owner-secret",
        options={"steps": 3},
        **fields,
    )
    store.create(record)
    return record


def test_payload_has_ids_status_links_and_nothing_else(tmp_path: Path) -> None:
    store = JobStore.in_data_dir(tmp_path)
    record = _record(store)
    done = store.finish(record.id, "failed", 5.0, error_code="undecodable_image", error_message="bad bytes")
    payload = webhook_payload(done)
    assert payload["id"] == record.id and payload["status"] == "failed"
    assert payload["error"] == {"code": "undecodable_image"}
    assert payload["links"]["self"] == f"/v1/jobs/{record.id}" and "model" not in payload["links"]
    text = json.dumps(payload)
    assert "owner-secret" not in text and "bad bytes" not in text and "steps" not in text
    store.close()


class Receiver:
    """An httpx transport answering with scripted status codes, recording requests."""

    def __init__(self, statuses: list[int | Exception]) -> None:
        self.statuses = list(statuses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.statuses.pop(0) if self.statuses else 200
        if isinstance(answer, Exception):
            raise answer
        headers = {"Location": "http://169.254.169.254/"} if answer in (301, 302, 307) else {}
        return httpx.Response(answer, headers=headers)


def deliver(tmp_path: Path, statuses: list[int | Exception], max_attempts: int = 4, **fields):
    settings = StorageSettings(
        data_dir=str(tmp_path),
        webhook_secret=SECRET,
        webhook_allowlist=ALLOW,
        webhook_max_attempts=max_attempts,
        webhook_backoff_seconds=0.5,
    )
    store = JobStore.in_data_dir(tmp_path)
    record = _record(store, **fields)
    store.finish(record.id, "succeeded", 5.0, artifacts=["model.glb", "views.png"])
    receiver = Receiver(statuses)
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def go() -> bool:
        client = httpx.AsyncClient(transport=httpx.MockTransport(receiver), follow_redirects=False)
        notifier = WebhookNotifier(settings, store, client=client, sleep=fake_sleep)
        task = notifier.schedule(record.id)
        assert task is not None
        delivered = await task
        await notifier.aclose()
        await client.aclose()
        return delivered

    delivered = asyncio.run(go())
    final = store.get(record.id)
    store.close()
    return delivered, final, receiver, sleeps


def test_delivery_signs_the_exact_body(tmp_path: Path) -> None:
    delivered, final, receiver, sleeps = deliver(tmp_path, [200])
    assert delivered and sleeps == []
    (request,) = receiver.requests
    assert str(request.url) == "http://127.0.0.1:9000/lift3d/done"
    assert verify_signature(SECRET, request.headers[SIGNATURE_HEADER], request.content)
    body = json.loads(request.content)
    assert body["status"] == "succeeded" and body["links"]["model"].endswith("/model.glb")
    assert body["links"]["views"].endswith("/views.png")
    assert (final.webhook_status, final.webhook_attempts, final.webhook_error) == ("delivered", 1, None)


def test_retries_with_backoff_then_succeeds(tmp_path: Path) -> None:
    delivered, final, receiver, sleeps = deliver(tmp_path, [503, httpx.ConnectError("refused"), 200])
    assert delivered and len(receiver.requests) == 3
    assert sleeps == [0.5, 1.0]
    assert (final.webhook_status, final.webhook_attempts) == ("delivered", 3)


def test_gives_up_after_bounded_attempts_and_records_it(tmp_path: Path) -> None:
    delivered, final, receiver, sleeps = deliver(tmp_path, [500] * 10, max_attempts=3)
    assert not delivered and len(receiver.requests) == 3
    assert sleeps == [0.5, 1.0]
    assert (final.webhook_status, final.webhook_attempts, final.webhook_error) == ("failed", 3, "HTTP 500")


def test_permanent_refusal_and_redirects_are_not_retried_or_followed(tmp_path: Path) -> None:
    delivered, final, receiver, _ = deliver(tmp_path, [404])
    assert not delivered and len(receiver.requests) == 1 and final.webhook_status == "failed"
    delivered, final, receiver, _ = deliver(tmp_path / "redirect", [302])
    assert not delivered and len(receiver.requests) == 1
    assert final.webhook_error == "HTTP 302"


def test_backoff_is_capped() -> None:
    settings = StorageSettings(webhook_backoff_seconds=1.0, webhook_backoff_max_seconds=5.0)
    notifier = WebhookNotifier(settings, store=None)  # type: ignore[arg-type]
    assert [notifier.backoff(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
