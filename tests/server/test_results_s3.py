"""The S3 result store against moto's S3 server (a subprocess on 127.0.0.1): both encryption modes,
deletion, the orphan sweep, presigned URLs through a plain HTTP client, and outages as typed 503s."""

from __future__ import annotations

import base64
import os

import httpx
import pytest

from lift3d.errors import ResultNotFound, ResultStoreConfigError, StorageUnavailable
from lift3d.settings import StorageSettings
from server.problems import http_status
from server.results import KeyRing, decrypt, generate_key_text, open_result_store
from server.results_s3 import S3ResultStore, parse_results_url
from tests.support.lifecycle import free_port
from tests.support.moto_s3 import MotoS3, moto_fixture

GLB = b"glTF" + (2).to_bytes(4, "little") + os.urandom(3000)
KEY = generate_key_text()


@pytest.fixture(scope="module")
def moto(tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from moto_fixture(tmp_path_factory)


def store_on(moto: MotoS3, prefix: str, *, client_side: bool = True, **options) -> S3ResultStore:  # type: ignore[no-untyped-def]
    ring = KeyRing([base64.b64decode(KEY)]) if client_side else None
    return S3ResultStore(moto.client(), moto.bucket, prefix, ring=ring, **options)


def test_results_url_parsing() -> None:
    assert parse_results_url("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_results_url("s3://bucket") == ("bucket", "")
    with pytest.raises(ResultStoreConfigError):
        parse_results_url("s3:///prefix")
    with pytest.raises(ResultStoreConfigError):
        open_result_store(StorageSettings(results="gs://bucket"))


def test_an_install_without_boto3_is_told_which_extra_to_add(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from server.results_s3 import make_client

    monkeypatch.setitem(sys.modules, "boto3", None)  # what an install without the s3 extra sees
    with pytest.raises(ResultStoreConfigError, match=r"lift3d\[s3\]"):
        make_client(StorageSettings(results="s3://bucket/prefix"))


def test_client_mode_stores_only_ciphertext(moto: MotoS3) -> None:
    store = store_on(moto, "client-mode")
    assert store.put("job1", "model.glb", GLB) == len(GLB)
    objects = moto.objects("client-mode/")
    assert list(objects) == ["client-mode/job1/model.glb.enc"]
    raw = objects["client-mode/job1/model.glb.enc"]
    assert b"glTF" not in raw and GLB[100:164] not in raw
    assert decrypt(KeyRing([base64.b64decode(KEY)]), "job1", "model.glb", raw) == GLB
    assert store.get("job1", "model.glb") == GLB
    assert store.download_url("job1", "model.glb") is None  # only this server can decrypt


def test_provider_mode_uses_sse_and_presigned_urls(moto: MotoS3) -> None:
    store = store_on(moto, "provider-mode", client_side=False, url_ttl_seconds=60)
    store.put("job1", "model.glb", GLB)
    head = moto.client().head_object(Bucket=moto.bucket, Key="provider-mode/job1/model.glb")
    assert head["ServerSideEncryption"] == "AES256" and head["ContentType"] == "model/gltf-binary"
    url = store.download_url("job1", "model.glb")
    assert url is not None and "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.content == GLB
    # (moto does not check signatures, so a tampered URL cannot be tested against it.)


def test_provider_mode_with_kms(moto: MotoS3) -> None:
    store = store_on(moto, "kms-mode", client_side=False, sse="aws:kms", kms_key_id="alias/lift3d")
    store.put("job1", "model.glb", GLB)
    head = moto.client().head_object(Bucket=moto.bucket, Key="kms-mode/job1/model.glb")
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"].endswith("alias/lift3d")


def test_delete_listing_and_missing(moto: MotoS3) -> None:
    store = store_on(moto, "lifecycle")
    for job_id in ("job-a", "job-b"):
        store.put(job_id, "model.glb", GLB)
    store.put("job-a", "views.png", b"\x89PNG views")
    assert sorted(store.job_ids()) == ["job-a", "job-b"]
    assert store.delete("job-a") == 2
    assert sorted(store.job_ids()) == ["job-b"] and list(moto.objects("lifecycle/")) == ["lifecycle/job-b/model.glb.enc"]
    assert store.delete("job-a") == 0
    with pytest.raises(ResultNotFound):
        store.get("job-a", "model.glb")
    with pytest.raises(ResultNotFound):
        store.get("../escape", "model.glb")


def test_sweep_removes_strays_and_unfinished_uploads(moto: MotoS3) -> None:
    store = store_on(moto, "sweep")
    store.put("job-ok", "model.glb", GLB)
    client = moto.client()
    for stray in ("sweep/job-ok/model.glb", "sweep/loose-file", "sweep/job-ok/deep/x.enc"):
        client.put_object(Bucket=moto.bucket, Key=stray, Body=b"stray")
    client.put_object(Bucket=moto.bucket, Key="outside/keep", Body=b"not ours")
    upload = client.create_multipart_upload(Bucket=moto.bucket, Key="sweep/job-x/model.glb.enc")
    assert store.sweep_partial() == 4
    assert list(moto.objects("sweep/")) == ["sweep/job-ok/model.glb.enc"]
    assert "outside/keep" in moto.objects("outside/")
    uploads = client.list_multipart_uploads(Bucket=moto.bucket, Prefix="sweep/").get("Uploads", [])
    assert upload["UploadId"] not in [u["UploadId"] for u in uploads]


def test_settings_go_through_the_aws_sdk_chain(moto: MotoS3, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    settings = StorageSettings(data_dir=str(tmp_path), results="s3://lift3d-test/from-env", encryption_keys=(KEY,))
    store = open_result_store(settings)
    # Endpoint and retries come from the SDK's own variables (AWS_ENDPOINT_URL_S3, AWS_MAX_ATTEMPTS).
    assert store.client.meta.endpoint_url == moto.endpoint
    assert store.client.meta.config.retries == {"mode": "standard", "total_max_attempts": 2}
    store.check()
    store.put("job1", "model.glb", GLB)
    assert list(moto.objects("from-env/")) == ["from-env/job1/model.glb.enc"]


def test_an_unreachable_store_is_storage_unavailable(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    dead = MotoS3(tmp_path, port=free_port())  # never started: nothing listens there
    for name, value in dead.env().items():
        monkeypatch.setenv(name, value)
    store = open_result_store(
        StorageSettings(data_dir=str(tmp_path), results="s3://lift3d-test/x", encryption_keys=(KEY,))
    )
    for call in (store.check, lambda: store.put("job1", "model.glb", GLB), lambda: store.get("job1", "model.glb")):
        with pytest.raises(StorageUnavailable) as caught:
            call()
        assert caught.value.code == "storage_unavailable" and http_status(caught.value) == 503
        assert caught.value.retry_after_seconds


def test_a_missing_bucket_is_storage_unavailable(moto: MotoS3) -> None:
    store = S3ResultStore(moto.client(), "no-such-bucket", "", ring=None)
    with pytest.raises(StorageUnavailable):
        store.check()
    with pytest.raises(StorageUnavailable):
        store.put("job1", "model.glb", GLB)


def test_presigned_urls_reach_the_job_view_and_the_webhook(moto: MotoS3, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from server.jobstore import JobRecord
    from server.schemas import job_view
    from server.storage import Storage
    from server.webhooks import webhook_payload

    store = store_on(moto, "links", client_side=False)
    storage = Storage(StorageSettings(data_dir=str(tmp_path)), results=store)
    store.put("job1", "model.glb", GLB)
    store.put("job1", "views.png", b"\x89PNG views")
    done = JobRecord(id="job1", created_at=0.0, retention_seconds=60, status="succeeded", artifacts=["model.glb", "views.png"])
    downloads = storage.download_links(done)
    view = job_view(done, downloads=downloads)
    assert httpx.get(view.links.model_download).content == GLB
    assert httpx.get(view.links.views_download).content == b"\x89PNG views"
    links = webhook_payload(done, "https://api.example.com", downloads)["links"]
    assert links["model_download"] == view.links.model_download and links["model"].startswith("https://api.example.com/")
    failed = JobRecord(id="job2", created_at=0.0, retention_seconds=60, status="failed")
    assert storage.download_links(failed) == {} and "model_download" not in webhook_payload(failed, "", {})["links"]
    # Client-side encryption never hands out a bucket URL.
    assert Storage(StorageSettings(data_dir=str(tmp_path / "c")), results=store_on(moto, "c")).download_links(done) == {}
    storage.close()


class FlakyS3:
    """An S3 endpoint that answers 503 SlowDown to the first ``failures`` requests, then 200."""

    def __init__(self, failures: int) -> None:
        import http.server
        import threading

        self.requests = 0
        flaky = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                flaky.requests += 1
                if flaky.requests <= failures:
                    body = b"<Error><Code>SlowDown</Code><Message>slow down</Message></Error>"
                    self.send_response(503)
                else:
                    body = b""
                    self.send_response(200)
                    self.send_header("ETag", '"etag"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("attempts", "stored"), [("3", True), ("2", False)])
def test_transient_errors_are_retried_with_backoff(attempts: str, stored: bool, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    flaky = FlakyS3(failures=2)
    try:
        for name, value in MotoS3(tmp_path).env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", flaky.endpoint)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", attempts)
        store = open_result_store(
            StorageSettings(data_dir=str(tmp_path), results="s3://bucket/p", encryption_keys=(KEY,))
        )
        if stored:
            assert store.put("job1", "model.glb", GLB) == len(GLB)
        else:
            with pytest.raises(StorageUnavailable, match="SlowDown"):
                store.put("job1", "model.glb", GLB)
        assert flaky.requests == int(attempts)
    finally:
        flaky.close()


def test_a_live_result_whose_key_is_gone_refuses_the_start(moto: MotoS3) -> None:
    """Client mode: the start reads each live object's header and names the key ids nobody configured."""
    from lift3d.errors import EncryptionKeyMissing
    from server.results import key_id

    store_on(moto, "lost-key").put("job-live", "model.glb", GLB)
    other = base64.b64decode(generate_key_text())
    checker = S3ResultStore(moto.client(), moto.bucket, "lost-key", ring=None)
    with pytest.raises(EncryptionKeyMissing) as refused:
        checker.check_keys_open(["job-live"], [other])
    assert key_id(base64.b64decode(KEY)).hex() in refused.value.message
    checker.check_keys_open(["job-live"], [other, base64.b64decode(KEY)])  # the key is back: starts
    checker.check_keys_open(["job-expired"], [other])  # only live jobs count
