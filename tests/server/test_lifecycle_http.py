"""Issue 7 acceptance through the real server (subprocess): expiry, encryption at rest,
owner erasure and signed webhooks. The restart test lives in test_lifecycle_restart.py.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
from datetime import datetime

import pytest

from tests.support.lifecycle import ENGINES, ServerProcess, canary_image, find_canaries, free_port, weights_dir_for
from server.results import EncryptedFileStore, KeyRing, ResultDecryptionError, decrypt, generate_key_text
from server.webhooks import SIGNATURE_HEADER, sign, verify_signature

KEY = generate_key_text()
WEBHOOK_SECRET = "lifecycle-webhook-secret"


class Receiver:
    """A webhook receiver on 127.0.0.1 recording every request it gets."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.received = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.received:
                    receiver.requests.append((self.path, dict(self.headers), body))
                    receiver.received.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, job_id: str, timeout: float = 30.0) -> tuple[str, dict[str, str], bytes]:
        deadline = time.monotonic() + timeout
        with self.received:
            while True:
                for request in self.requests:
                    if json.loads(request[2]).get("id") == job_id:
                        return request
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no webhook for job {job_id} within {timeout}s")
                self.received.wait(left)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module", params=ENGINES)
def server(request: pytest.FixtureRequest, tmp_path_factory, receiver: Receiver):
    data_dir = tmp_path_factory.mktemp("lifecycle") / "data"
    process = ServerProcess(
        data_dir,
        engine=request.param,
        weights_dir=weights_dir_for(request.param, request),
        env={
            "LIFT3D_ENCRYPTION_KEYS": KEY,
            "LIFT3D_SWEEP_INTERVAL_SECONDS": "0.2",
            "LIFT3D_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "LIFT3D_WEBHOOK_ALLOWLIST": f"http://127.0.0.1:{receiver.port}/hooks/",
        },
    ).start()
    yield process
    process.stop()


@pytest.fixture()
def client(server: ServerProcess):
    with server.client() as client:
        yield client


def run_job(server: ServerProcess, client, image: bytes, **params) -> str:
    response = server.submit(client, image, **params)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    view = server.wait_for(client, job_id, {"succeeded", "failed", "cancelled"})
    assert view["status"] == "succeeded", view
    return job_id


def test_expiry_serves_then_erases(server: ServerProcess, client) -> None:
    image, _ = canary_image()
    job_id = run_job(server, client, image, retention_seconds=4)
    view = client.get(f"/v1/jobs/{job_id}").json()
    served = client.get(f"/v1/jobs/{job_id}/model.glb")
    assert served.status_code == 200 and served.content[:4] == b"glTF"
    expires_at = datetime.fromisoformat(view["expires_at"]).timestamp()
    assert time.time() < expires_at, "the download above happened before expiry"
    assert expires_at == pytest.approx(datetime.fromisoformat(view["finished_at"]).timestamp() + 4)
    stored = server.data_dir / "results" / job_id
    assert (stored / "model.glb.enc").is_file()

    deadline = time.monotonic() + 30
    # The status follows the clock (expired from expires_at on); the files go with the next sweep.
    while stored.exists():
        assert time.monotonic() < deadline, "the sweeper never erased the results"
        time.sleep(0.2)
    assert client.get(f"/v1/jobs/{job_id}/model.glb").status_code == 404
    record = client.get(f"/v1/jobs/{job_id}").json()
    assert record["status"] == "expired"
    assert not record.get("result") and not record.get("error")


def test_results_are_encrypted_at_rest(server: ServerProcess, client) -> None:
    image, _ = canary_image()
    job_id = run_job(server, client, image, return_views=True)
    served = client.get(f"/v1/jobs/{job_id}/model.glb")
    assert served.status_code == 200 and served.content[:4] == b"glTF"
    ring = KeyRing([base64.b64decode(KEY)])
    for name, served_bytes in (("model.glb", served.content), ("views.png", None)):
        raw = (server.data_dir / "results" / job_id / f"{name}.enc").read_bytes()
        assert b"glTF" not in raw and b"PNG" not in raw[:16]
        plain = decrypt(ring, job_id, name, raw)
        if served_bytes is None:
            served_bytes = client.get(f"/v1/jobs/{job_id}/views.png").content
        assert plain == served_bytes
    # Another key (and another job's id as associated data) fail loudly, never garbage.
    raw = (server.data_dir / "results" / job_id / "model.glb.enc").read_bytes()
    with pytest.raises(ResultDecryptionError):
        decrypt(KeyRing([base64.b64decode(generate_key_text())]), job_id, "model.glb", raw)
    with pytest.raises(ResultDecryptionError):
        decrypt(ring, "some-other-job", "model.glb", raw)


def test_wrong_key_fails_loudly_through_the_server(server: ServerProcess, client) -> None:
    """A result the server's keys cannot open (another key, as after a key mix-up) is a typed 500."""
    image, _ = canary_image()
    job_id = run_job(server, client, image)
    other_key = KeyRing([base64.b64decode(generate_key_text())])
    EncryptedFileStore(server.data_dir / "results", other_key).put(job_id, "model.glb", b"glTF-from-another-key")
    response = client.get(f"/v1/jobs/{job_id}/model.glb")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "result_undecryptable"
    assert b"glTF" not in response.content
    # Flipping one ciphertext byte of a file under the right key fails the same way.
    job_id = run_job(server, client, image)
    path = server.data_dir / "results" / job_id / "model.glb.enc"
    blob = bytearray(path.read_bytes())
    blob[-20] ^= 0x80
    path.write_bytes(bytes(blob))
    response = client.get(f"/v1/jobs/{job_id}/model.glb")
    assert response.status_code == 500 and response.json()["code"] == "result_undecryptable"


def test_owner_erasure(server: ServerProcess, client) -> None:
    image, needles = canary_image()
    owner_a, owner_b = "owner-a-7f3c", "owner-b-91d2"
    a_jobs = [run_job(server, client, image, owner=owner_a, seed=seed) for seed in (1, 2)]
    b_job = run_job(server, client, image, owner=owner_b)
    b_glb = client.get(f"/v1/jobs/{b_job}/model.glb").content
    listed = client.get(f"/v1/owners/{owner_a}/jobs").json()
    assert {job["id"] for job in listed["jobs"]} == set(a_jobs)

    assert client.delete(f"/v1/owners/{owner_a}").status_code == 204

    assert client.get(f"/v1/owners/{owner_a}/jobs").json()["jobs"] == []
    for job_id in a_jobs:
        assert client.get(f"/v1/jobs/{job_id}").status_code == 404
        assert client.get(f"/v1/jobs/{job_id}/model.glb").status_code == 404
        assert not (server.data_dir / "results" / job_id).exists()
    assert [job["id"] for job in client.get(f"/v1/owners/{owner_b}/jobs").json()["jobs"]] == [b_job]
    assert client.get(f"/v1/jobs/{b_job}/model.glb").content == b_glb
    # Nothing of owner A is left in the data directory (the SQLite files included).
    assert find_canaries(server.data_dir, [owner_a.encode()]) == []
    assert find_canaries(server.data_dir, needles) == []
    # Erasing again is harmless.
    assert client.delete(f"/v1/owners/{owner_a}").status_code == 204


def test_delete_job_erases_it(server: ServerProcess, client) -> None:
    image, _ = canary_image()
    job_id = run_job(server, client, image)
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/model.glb").status_code == 404
    assert not (server.data_dir / "results" / job_id).exists()


def test_webhook_is_signed_and_verifiable(server: ServerProcess, client, receiver: Receiver) -> None:
    image, needles = canary_image()
    url = f"http://127.0.0.1:{receiver.port}/hooks/lift3d"
    job_id = run_job(server, client, image, webhook_url=url)
    path, headers, body = receiver.wait_for(job_id)
    assert path == "/hooks/lift3d"
    header = {k.lower(): v for k, v in headers.items()}[SIGNATURE_HEADER.lower()]
    assert verify_signature(WEBHOOK_SECRET, header, body)

    payload = json.loads(body)
    assert payload["id"] == job_id and payload["status"] == "succeeded" and payload["error"] is None
    assert payload["links"]["model"].endswith(f"/v1/jobs/{job_id}/model.glb")
    assert not any(needle in body for needle in needles) and len(body) < 2000

    timestamp = int(header.split(",")[0].removeprefix("t="))
    digest = header.split("v1=")[1]
    tampered_digest = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    assert not verify_signature(WEBHOOK_SECRET, f"t={timestamp},v1={tampered_digest}", body)
    assert not verify_signature(WEBHOOK_SECRET, header, body.replace(b"succeeded", b"failed\x20\x20\x20"))
    assert not verify_signature("another-secret", header, body)
    assert not verify_signature(WEBHOOK_SECRET, header, body, now=timestamp + 301)
    # Re-signing a replayed body needs the secret: an old signature with a fresh t fails.
    assert not verify_signature(WEBHOOK_SECRET, f"t={int(time.time())},v1={digest}", body, now=timestamp + 301 + 10)
    assert verify_signature(WEBHOOK_SECRET, sign(WEBHOOK_SECRET, body), body)


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{other}/hooks/lift3d",  # another port on the same host
        "http://127.0.0.1:{port}/admin",  # outside the allowed path
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata (SSRF)
        "file:///etc/passwd",
    ],
)
def test_webhook_off_the_allowlist_is_422(server: ServerProcess, client, receiver: Receiver, target: str) -> None:
    image, _ = canary_image()
    url = target.format(port=receiver.port, other=receiver.port + 1 if receiver.port < 65535 else 1024)
    response = server.submit(client, image, webhook_url=url)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "webhook_not_allowed"


def test_no_upload_bytes_in_the_data_dir(server: ServerProcess) -> None:
    """After every job above, the data dir holds records and encrypted results only."""
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            assert path.name.startswith("jobs.sqlite3") or path.name == "lift3d.lock" or path.suffix == ".enc", path
