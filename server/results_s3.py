"""Results in an S3-compatible bucket (AWS S3, Cloudflare R2, Hetzner, MinIO), through boto3.

``LIFT3D_RESULTS=s3://bucket/prefix`` selects it. Everything else about the
connection comes from the AWS SDK's own configuration chain, so operators use
the variables their provider documents: ``AWS_ENDPOINT_URL_S3`` (or
``AWS_ENDPOINT_URL``), ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, a config file or an instance role; retries follow
``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE`` (botocore's ``standard`` mode, with
exponential backoff, by default).

Object layout: ``<prefix>/<job id>/<name>`` in ``provider`` mode and
``<prefix>/<job id>/<name>.enc`` in ``client`` mode, where the object is the very
same AES-256-GCM blob the local store writes (``server/results.py``), so the
provider never sees a plaintext byte. A single PUT is atomic in S3: readers see
the old object or the whole new one, never a torn write.

Every failure to reach the store, after botocore's retries, is
``StorageUnavailable`` (503, retryable); a missing object is ``ResultNotFound``.
"""

from __future__ import annotations

import logging
from typing import Any, Collection, Iterator

from lift3d.errors import ResultNotFound, ResultStoreConfigError, StorageUnavailable
from lift3d.settings import StorageSettings
from server.results import (
    _ARTIFACT,
    _JOB_ID,
    ENCRYPTED_SUFFIX,
    HEADER_BYTES,
    KeyRing,
    check_names,
    decrypt,
    encrypt,
    header_key_id,
    refuse_missing_keys,
)

log = logging.getLogger("lift3d.results")

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
# What S3 answers for an absent key or bucket.
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_CONTENT_TYPES = {".glb": "model/gltf-binary", ".png": "image/png"}


def parse_results_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")`` (the prefix may be empty)."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket or "/" in bucket:
        raise ResultStoreConfigError(f"LIFT3D_RESULTS must look like s3://bucket/prefix, got {url!r}")
    return bucket, prefix.strip("/")


def make_client(settings: StorageSettings) -> Any:
    """A boto3 S3 client from the standard AWS chain; lift3d adds only timeouts and, if set, the addressing style."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ResultStoreConfigError(
            "LIFT3D_RESULTS=s3://... needs boto3, which this install lacks: pip install 'lift3d[s3]'"
        ) from None

    options: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "read_timeout": READ_TIMEOUT_S,
        # Presigned URLs must be SigV4 everywhere (R2 and MinIO refuse the legacy signature).
        "signature_version": "s3v4",
    }
    if settings.results_addressing_style != "auto":
        options["s3"] = {"addressing_style": settings.results_addressing_style}
    return boto3.session.Session().client("s3", config=Config(**options))


class S3ResultStore:
    """The :class:`server.results.ResultStore` protocol over one bucket prefix."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        ring: KeyRing | None,
        sse: str = "AES256",
        kms_key_id: str = "",
        url_ttl_seconds: int = 900,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        # ring None = provider mode: the provider's SSE protects the bytes at rest.
        self.ring = ring
        self.sse = sse
        self.kms_key_id = kms_key_id
        self.url_ttl_seconds = url_ttl_seconds

    @classmethod
    def from_settings(cls, settings: StorageSettings, live_jobs: Collection[str] | None = None) -> "S3ResultStore":
        """The configured store; with ``live_jobs`` (the server's start) in client mode, refuses
        (EncryptionKeyMissing) when their objects need a key that is not configured."""
        bucket, prefix = parse_results_url(settings.results)
        client_side = settings.results_encryption == "client"
        if not client_side and settings.results_sse == "aws:kms" and not settings.results_kms_key_id:
            log.info("SSE-KMS without LIFT3D_RESULTS_KMS_KEY_ID: the bucket's default KMS key is used")
        store = cls(
            make_client(settings),
            bucket,
            prefix,
            ring=None,
            sse=settings.results_sse,
            kms_key_id=settings.results_kms_key_id,
            url_ttl_seconds=settings.results_url_ttl_seconds,
        )
        if client_side:
            if live_jobs:
                store.check_keys_open(live_jobs, KeyRing.existing_keys(settings))
            store.ring = KeyRing.without_check(settings)
        log.info(
            "results in s3://%s/%s (%s encryption)", bucket, store.prefix, "client-side" if client_side else "provider"
        )
        return store

    def check_keys_open(self, live_jobs: Collection[str], keys: list[bytes]) -> None:
        """EncryptionKeyMissing when a live job's object was encrypted with a key not in ``keys``.

        Reads each object's header only (a ranged GET). A store that cannot be reached is
        logged and left to /readyz: an outage must not stop the server from starting.
        """
        found: set[bytes] = set()
        try:
            for job_id in live_jobs:
                for key in self._keys(self._job_prefix(job_id)):
                    if not key.endswith(ENCRYPTED_SUFFIX):
                        continue
                    response = self._call(
                        "read a result's header", self.client.get_object, Bucket=self.bucket, Key=key,
                        Range=f"bytes=0-{HEADER_BYTES - 1}", missing_ok=True,
                    )
                    if response is not None and (kid := header_key_id(response["Body"].read())) is not None:
                        found.add(kid)
        except StorageUnavailable as error:
            log.warning("could not check the stored results' key ids: %s", error.message)
            return
        refuse_missing_keys(found, keys)

    # -- names ---------------------------------------------------------------------

    def key_for(self, job_id: str, name: str) -> str:
        check_names(job_id, name)
        suffix = ENCRYPTED_SUFFIX if self.ring is not None else ""
        return f"{self.prefix}{job_id}/{name}{suffix}"

    def _job_prefix(self, job_id: str) -> str:
        check_names(job_id)
        return f"{self.prefix}{job_id}/"

    # -- the protocol ----------------------------------------------------------------

    def put(self, job_id: str, name: str, data: bytes) -> int:
        key = self.key_for(job_id, name)
        extra: dict[str, Any]
        if self.ring is not None:
            body = encrypt(self.ring, job_id, name, data)
            extra = {"ContentType": "application/octet-stream"}
        else:
            body = data
            suffix = name[name.rfind(".") :]
            extra = {"ContentType": _CONTENT_TYPES.get(suffix, "application/octet-stream"), "ServerSideEncryption": self.sse}
            if self.sse == "aws:kms" and self.kms_key_id:
                extra["SSEKMSKeyId"] = self.kms_key_id
        self._call("store a result", self.client.put_object, Bucket=self.bucket, Key=key, Body=body, **extra)
        return len(data)

    def get(self, job_id: str, name: str) -> bytes:
        key = self.key_for(job_id, name)
        response = self._call("read a result", self.client.get_object, Bucket=self.bucket, Key=key, missing_ok=True)
        if response is None:
            raise ResultNotFound("no such result")
        try:
            blob = response["Body"].read()
        except Exception as error:  # noqa: BLE001 - the connection broke mid-body (urllib3/botocore types)
            raise StorageUnavailable(f"the result store broke off a download ({type(error).__name__})") from error
        return decrypt(self.ring, job_id, name, blob) if self.ring is not None else blob

    def delete(self, job_id: str) -> int:
        keys = list(self._keys(self._job_prefix(job_id)))
        self._delete_keys(keys)
        return len(keys)

    def job_ids(self) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/")
        for page in self._call("list results", lambda: list(pages)):
            for common in page.get("CommonPrefixes", []):
                job_id = common["Prefix"][len(self.prefix) :].rstrip("/")
                if _JOB_ID.match(job_id):
                    yield job_id

    def sweep_partial(self) -> int:
        """Abort multipart uploads left under the prefix, and remove keys this store would never write.

        (Our own PUTs are single requests; multipart leftovers come from other tools or
        an older writer.) Keys of another encryption mode are strays too: they cannot be served.
        """
        removed = 0
        uploads = self._call(
            "list unfinished uploads", self.client.list_multipart_uploads, Bucket=self.bucket, Prefix=self.prefix
        )
        for upload in uploads.get("Uploads", []):
            self._call(
                "abort an unfinished upload",
                self.client.abort_multipart_upload,
                Bucket=self.bucket,
                Key=upload["Key"],
                UploadId=upload["UploadId"],
            )
            removed += 1
        strays = [key for key in self._keys(self.prefix) if not self._is_ours(key)]
        self._delete_keys(strays)
        return removed + len(strays)

    def check(self) -> None:
        self._call("reach the bucket", self.client.head_bucket, Bucket=self.bucket)

    def download_url(self, job_id: str, name: str) -> str | None:
        if self.ring is not None:
            return None  # client-side encrypted: only this server can decrypt, so downloads go through it
        # Presigning is local computation (no request), so it cannot fail on an outage.
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.key_for(job_id, name)}, ExpiresIn=self.url_ttl_seconds
        )

    # -- helpers -----------------------------------------------------------------------

    def _is_ours(self, key: str) -> bool:
        job_id, _, rest = key[len(self.prefix) :].partition("/")
        if not _JOB_ID.match(job_id) or "/" in rest:
            return False
        if self.ring is not None:
            return rest.endswith(ENCRYPTED_SUFFIX) and bool(_ARTIFACT.match(rest.removesuffix(ENCRYPTED_SUFFIX)))
        return bool(_ARTIFACT.match(rest))

    def _keys(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call("list results", lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=prefix)))
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"]

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            response = self._call(
                "delete results", self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )
            failed = response.get("Errors", [])
            if failed:
                raise StorageUnavailable(f"the result store refused to delete {len(failed)} object(s) ({failed[0].get('Code')})")

    def _call(self, action: str, method: Any, *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
        """One SDK call (botocore retries transient errors itself); its failure as a typed error."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return method(*args, **kwargs)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if missing_ok and code in _MISSING_CODES:
                return None
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            log.warning("result store: cannot %s: %s (HTTP %s)", action, code, status)
            raise StorageUnavailable(f"the result store refused to {action} ({code or status})") from error
        except BotoCoreError as error:
            log.warning("result store: cannot %s: %s", action, type(error).__name__)
            raise StorageUnavailable(f"the result store is unreachable; could not {action}") from error
