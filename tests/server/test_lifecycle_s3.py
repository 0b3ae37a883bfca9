"""The data lifecycle through the real server (subprocess, fake engine) with results in S3.

The store is moto's S3 server in a subprocess on 127.0.0.1, reached through the AWS
SDK's own variables (AWS_ENDPOINT_URL_S3 and friends), in both encryption modes:
encryption at rest (no plaintext GLB object in ``client`` mode), presigned URLs in
``provider`` mode fetched with plain httpx, expiry, erasure, restart with the orphan
sweep, and an outage: the store stopped mid-job fails the job with
``storage_unavailable``, and the server recovers once the store is back.
"""

from __future__ import annotations

import base64
import time
import uuid

import httpx
import pytest

from server.results import KeyRing, decrypt, encrypt, generate_key_text
from tests.support.lifecycle import ServerProcess, canary_image, data_files
from tests.support.moto_s3 import MotoS3, moto_fixture

KEY = generate_key_text()
MODES = ["client", "provider"]


@pytest.fixture(scope="module")
def moto(tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from moto_fixture(tmp_path_factory)


def s3_env(moto: MotoS3, mode: str, prefix: str) -> dict[str, str]:
    return {
        **moto.env(),
        "LIFT3D_RESULTS": f"s3://{moto.bucket}/{prefix}",
        "LIFT3D_RESULTS_ENCRYPTION": mode,
        "LIFT3D_ENCRYPTION_KEYS": KEY,
        "LIFT3D_SWEEP_INTERVAL_SECONDS": "0.2",
    }


@pytest.fixture(scope="module", params=MODES)
def server(request: pytest.FixtureRequest, tmp_path_factory, moto: MotoS3):  # type: ignore[no-untyped-def]
    prefix = f"{request.param}-{uuid.uuid4().hex[:8]}"
    process = ServerProcess(tmp_path_factory.mktemp("s3") / "data", env=s3_env(moto, request.param, prefix)).start()
    process.mode, process.prefix = request.param, prefix  # type: ignore[attr-defined]
    yield process
    process.stop()


def run_job(server: ServerProcess, client: httpx.Client, image: bytes, **params) -> dict:  # type: ignore[no-untyped-def]
    response = server.submit(client, image, **params)
    assert response.status_code == 202, response.text
    view = server.wait_for(client, response.json()["id"], {"succeeded", "failed", "cancelled"})
    assert view["status"] == "succeeded", view
    return view


def job_objects(moto: MotoS3, server: ServerProcess, job_id: str) -> dict[str, bytes]:
    return moto.objects(f"{server.prefix}/{job_id}/")  # type: ignore[attr-defined]


def test_results_live_in_the_bucket_encrypted_as_configured(server: ServerProcess, moto: MotoS3) -> None:
    image, needles = canary_image()
    with server.client() as client:
        view = run_job(server, client, image, return_views=True)
        job_id = view["id"]
        glb = client.get(f"/v1/jobs/{job_id}/model.glb")
        views = client.get(f"/v1/jobs/{job_id}/views.png")
    assert glb.status_code == 200 and glb.content[:4] == b"glTF" and views.content[:4] == b"\x89PNG"
    stored = job_objects(moto, server, job_id)
    if server.mode == "client":  # type: ignore[attr-defined]
        assert sorted(stored) == [f"{server.prefix}/{job_id}/model.glb.enc", f"{server.prefix}/{job_id}/views.png.enc"]  # type: ignore[attr-defined]
        ring = KeyRing([base64.b64decode(KEY)])
        for key, raw in stored.items():
            assert b"glTF" not in raw and b"PNG" not in raw[:16], key
        raw_glb = stored[f"{server.prefix}/{job_id}/model.glb.enc"]  # type: ignore[attr-defined]
        assert decrypt(ring, job_id, "model.glb", raw_glb) == glb.content
        assert view["links"].get("model_download") is None  # downloads go through the server
    else:
        assert stored[f"{server.prefix}/{job_id}/model.glb"] == glb.content  # type: ignore[attr-defined]
        links = view["links"]
        assert "X-Amz-Signature=" in links["model_download"]
        # A plain HTTP client, no credentials: the browser's path straight to the bucket.
        assert httpx.get(links["model_download"]).content == glb.content
        assert httpx.get(links["views_download"]).content == views.content
    # The data dir holds records only; nothing of the upload is anywhere.
    assert [f for f in data_files(server.data_dir) if not f.startswith("jobs.sqlite3")] == ["lift3d.lock"]
    for raw in stored.values():
        assert not any(needle in raw for needle in needles)


def test_expiry_deletes_the_objects(server: ServerProcess, moto: MotoS3) -> None:
    image, _ = canary_image()
    with server.client() as client:
        job_id = run_job(server, client, image, retention_seconds=2)["id"]
        assert job_objects(moto, server, job_id)
        deadline = time.monotonic() + 30
        # The status follows the clock (expired from expires_at on); the objects go with the next sweep.
        while job_objects(moto, server, job_id):
            assert time.monotonic() < deadline, "the sweeper never deleted the objects"
            time.sleep(0.2)
        assert client.get(f"/v1/jobs/{job_id}/model.glb").status_code == 404
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "expired"


def test_owner_and_job_erasure_delete_the_objects(server: ServerProcess, moto: MotoS3) -> None:
    image, _ = canary_image()
    with server.client() as client:
        a_jobs = [run_job(server, client, image, owner="owner-a", seed=seed)["id"] for seed in (1, 2)]
        b_job = run_job(server, client, image, owner="owner-b")["id"]
        single = run_job(server, client, image)["id"]
        assert client.delete("/v1/owners/owner-a").status_code == 204
        assert client.delete(f"/v1/jobs/{single}").status_code == 204
        for job_id in [*a_jobs, single]:
            assert client.get(f"/v1/jobs/{job_id}/model.glb").status_code == 404
            assert job_objects(moto, server, job_id) == {}
        assert client.get(f"/v1/jobs/{b_job}/model.glb").status_code == 200
    assert job_objects(moto, server, b_job)


# Client mode only: in provider mode the provider's own encryption holds nothing of ours to authenticate.
@pytest.mark.parametrize("server", ["client"], indirect=True)
def test_tampered_or_foreign_objects_fail_loudly(server: ServerProcess, moto: MotoS3) -> None:
    """Client mode: an object the server's keys cannot open is a typed 500, never served bytes."""
    assert server.mode == "client"  # type: ignore[attr-defined]
    image, _ = canary_image()
    with server.client() as client:
        job_id = run_job(server, client, image)["id"]
        key = f"{server.prefix}/{job_id}/model.glb.enc"  # type: ignore[attr-defined]
        blob = bytearray(moto.objects(key)[key])
        blob[-20] ^= 0x80
        moto.client().put_object(Bucket=moto.bucket, Key=key, Body=bytes(blob))
        response = client.get(f"/v1/jobs/{job_id}/model.glb")
        assert response.status_code == 500 and response.json()["code"] == "result_undecryptable"
        assert b"glTF" not in response.content
        foreign = KeyRing([base64.b64decode(generate_key_text())])
        moto.client().put_object(Bucket=moto.bucket, Key=key, Body=encrypt(foreign, job_id, "model.glb", b"glTF-x"))
        assert client.get(f"/v1/jobs/{job_id}/model.glb").json()["code"] == "result_undecryptable"


def test_restart_keeps_results_and_sweeps_orphans_from_the_prefix(tmp_path, moto: MotoS3) -> None:  # type: ignore[no-untyped-def]
    prefix = f"restart-{uuid.uuid4().hex[:8]}"
    env = s3_env(moto, "client", prefix)
    image, _ = canary_image()
    first = ServerProcess(tmp_path / "data", env=env).start()
    try:
        with first.client() as client:
            done_id = run_job(first, client, image)["id"]
            glb = client.get(f"/v1/jobs/{done_id}/model.glb").content
    finally:
        first.kill()
    bucket = moto.client()
    orphans = [f"{prefix}/jobThatNeverFinished/model.glb.enc", f"{prefix}/{done_id}/model.glb", f"{prefix}/stray"]
    for key in orphans:
        bucket.put_object(Bucket=moto.bucket, Key=key, Body=b"orphan")
    bucket.put_object(Bucket=moto.bucket, Key="someone-else/keep", Body=b"not ours")

    second = ServerProcess(tmp_path / "data", env=env).start()
    try:
        with second.client() as client:
            assert client.get(f"/v1/jobs/{done_id}/model.glb").content == glb
    finally:
        assert second.stop() == 0, second.log_tail()
    assert list(moto.objects(f"{prefix}/")) == [f"{prefix}/{done_id}/model.glb.enc"]
    assert moto.objects("someone-else/") == {"someone-else/keep": b"not ours"}


def test_outages_fail_jobs_cleanly_and_the_server_recovers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = MotoS3(tmp_path)  # its own store, not started yet: down when the server starts
    server = ServerProcess(tmp_path / "data", env=s3_env(store, "client", "outage")).start(ready=False)
    image, _ = canary_image()
    try:
        # A store down at start-up does not stop the server (a pod would restart-loop).
        deadline = time.monotonic() + 30
        while httpx.get(server.base_url + "/readyz").json().get("detail") != "storage_unavailable":
            assert time.monotonic() < deadline, server.log_tail()  # warming_up first, then the store
            time.sleep(0.2)
        assert "start-up sweep skipped" in server.log_tail()
        store.start()
        wait_ready(server, want=200)

        with server.client() as client:
            before = run_job(server, client, image)["id"]
            response = server.submit(client, image, steps=4)  # 2 s in the fake engine
            job_id = response.json()["id"]
            server.wait_for(client, job_id, {"running"})
            store.stop()  # mid-job
            view = server.wait_for(client, job_id, {"succeeded", "failed"}, timeout=60)
            assert view["status"] == "failed" and view["error"]["code"] == "storage_unavailable", view
            assert "could not be stored" in view["error"]["message"]
            assert wait_ready(server, want=503).json()["detail"] == "storage_unavailable"
            assert client.get(f"/v1/jobs/{job_id}/model.glb").status_code == 409
            # Reads and erasures answer 503 and change nothing: the erasure can be retried.
            assert client.get(f"/v1/jobs/{before}/model.glb").json()["code"] == "storage_unavailable"
            refused = client.delete(f"/v1/jobs/{before}")
            assert refused.status_code == 503 and refused.headers["retry-after"] == "30"
            assert client.get(f"/v1/jobs/{before}").json()["status"] == "succeeded"

            store.start()  # the provider is back (moto forgets objects; the bucket is made again)
            wait_ready(server, want=200)
            assert run_job(server, client, image)["status"] == "succeeded"
            assert client.delete(f"/v1/jobs/{before}").status_code == 204
    finally:
        server.stop()
        store.stop()


def wait_ready(server: ServerProcess, *, want: int, timeout: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(server.base_url + "/readyz", timeout=10)
        if response.status_code == want or time.monotonic() > deadline:
            assert response.status_code == want, response.text
            return response
        time.sleep(0.3)
