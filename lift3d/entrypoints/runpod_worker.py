"""RunPod serverless worker: one job in, one GLB out, with the engine resident across jobs.

Job input (``job["input"]``)::

    {"image_url": "https://..."}            # or
    {"image_base64": "<base64 or data: URL>"}
    + optional "options": {seed, steps, guidance, remove_background, target_faces, texture_size, texture,
                           pipeline, return_views}

Output, for the GLB and (with ``return_views``) the views PNG alike, by where results go:

- the configured result store (``LIFT3D_RESULTS=s3://...``, docs/storage.md): in
  ``provider`` encryption ``glb_url``/``views_url`` (presigned GET URLs); in ``client``
  encryption ``glb_key``/``views_key`` (the objects, AES-256-GCM with our keys);
- else RunPod's bucket variables (``BUCKET_ENDPOINT_URL``/``BUCKET_ACCESS_KEY_ID``/
  ``BUCKET_SECRET_ACCESS_KEY``, plus ``BUCKET_NAME``): ``glb_url``/``views_url``;
- else inline ``glb_base64``/``views_base64`` while both fit the response payload limit;

always the seed, options, timings, QA and the weights mode.
Progress goes out through ``runpod.serverless.progress_update``. The SDK's own log
prints job inputs and outputs: ``redact_sdk_log`` keeps base64 payloads and URL
signatures out of it.

The engine loads and warms up before the worker takes its first job, so a cold
start costs one model load and no per-job compilation. Configuration that is
RunPod's own (bucket credentials, the SDK's webhook URLs) is read from the
environment here, as the RunPod SDK itself does; everything else comes from
``Settings``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import msgspec

from lift3d.process import prepare_process
from lift3d.settings import Settings
from lift3d.errors import InputError, Lift3dError, UploadTooLarge
from pipeline.events import ProgressEvent
from pipeline.options import JobOptions
from pipeline.state import VIEWS_PREVIEW
from server.faults import free_gpu_cache, job_failure
from server.fetch import FetchFailed, FetchRefused, FetchTooLarge, fetch

log = logging.getLogger("lift3d.runpod")

# RunPod caps a job's result payload; base64 inflates by 4/3. Above this, a bucket is required.
MAX_INLINE_GLB_BYTES = 7_000_000
PROGRESS_INTERVAL_S = 2.0
PRESIGNED_URL_TTL_S = 7 * 24 * 3600
IMAGE_FETCH_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class BucketConfig:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    bucket: str
    prefix: str = "lift3d"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "BucketConfig | None":
        """RunPod's bucket variables; None when any credential is absent (inline output only)."""
        names = ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY")
        values = [environ.get(name, "") for name in names]
        if not all(values):
            return None
        return cls(*values, bucket=environ.get("BUCKET_NAME", "lift3d"))

    def upload(self, key: str, data: bytes, content_type: str = "model/gltf-binary") -> str:
        """PUT one result (one request) and return a presigned GET URL."""
        import boto3
        from botocore.config import Config

        client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=_region_of(self.endpoint_url),
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},  # works with AWS, R2, MinIO, B2 alike
                retries={"max_attempts": 3, "mode": "standard"},
                request_checksum_calculation="when_required",
            ),
        )
        object_key = f"{self.prefix}/{key}"
        client.put_object(Bucket=self.bucket, Key=object_key, Body=data, ContentType=content_type)
        return client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": object_key}, ExpiresIn=PRESIGNED_URL_TTL_S
        )


def licence_summary(metadata: dict[str, Any]) -> dict[str, Any]:
    """The pipeline, its artifacts' distinct licences and whether all allow commercial use."""
    artifacts = metadata.get("artifacts") or []
    return {
        "pipeline": metadata.get("pipeline"),
        "licences": sorted({row["licence"] for row in artifacts}),
        "commercial_use": bool(artifacts) and all(row.get("commercial_use") for row in artifacts),
    }


def _region_of(endpoint_url: str) -> str:
    from runpod.serverless.utils.rp_upload import extract_region_from_url

    return extract_region_from_url(endpoint_url) or "us-east-1"


class JobInput(msgspec.Struct, forbid_unknown_fields=True):
    image_url: str | None = None
    image_base64: str | None = None
    options: JobOptions = msgspec.field(default_factory=JobOptions)


def parse_input(raw: Any) -> JobInput:
    try:
        job_input = msgspec.convert(raw, JobInput)
    except msgspec.ValidationError as error:
        raise InputError(f"invalid job input: {error}") from error
    if (job_input.image_url is None) == (job_input.image_base64 is None):
        raise InputError("give exactly one of image_url or image_base64")
    return job_input


def image_bytes(job_input: JobInput, max_bytes: int, allowlist: tuple[str, ...] = ()) -> bytes:
    if job_input.image_base64 is not None:
        text = job_input.image_base64
        if text.startswith("data:"):
            text = text.partition(",")[2]
        if len(text) * 3 // 4 > max_bytes:
            raise UploadTooLarge(f"the image is larger than {max_bytes} bytes")
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error as error:
            raise InputError(f"image_base64 is not valid base64: {error}") from error
    return fetch_image(job_input.image_url or "", max_bytes, allowlist)


def fetch_image(url: str, max_bytes: int, allowlist: tuple[str, ...] = (), **fetch_options: Any) -> bytes:
    """The image at ``url``: normalised, public addresses only (unless allow-listed), every redirect re-checked."""
    try:
        return fetch(url, max_bytes=max_bytes, timeout_s=IMAGE_FETCH_TIMEOUT_S, allowlist=allowlist, **fetch_options)
    except FetchRefused as refused:
        raise InputError(f"image_url is not allowed: {refused}", code="image_url_not_allowed") from None
    except FetchTooLarge:
        raise UploadTooLarge(f"the image at image_url is larger than {max_bytes} bytes") from None
    except FetchFailed as failed:
        raise InputError(f"could not fetch image_url: {failed}", code="image_url_unreachable") from None


class ThrottledProgress:
    """Forward engine events to RunPod at most every few seconds, and on every stage change."""

    def __init__(self, send: Callable[[dict[str, Any]], None], interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self._send = send
        self._interval = interval_s
        self._last_time = 0.0
        self._last_stage = ""

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        if event.stage == self._last_stage and now - self._last_time < self._interval:
            return
        self._last_time, self._last_stage = now, event.stage
        self._send(
            {
                "stage": event.stage,
                "progress": round(event.fraction, 4),
                "step": event.step,
                "total": event.total,
                "message": event.message,
            }
        )


def make_handler(
    engine: Any,
    settings: Settings,
    *,
    bucket: BucketConfig | None,
    send_progress: Callable[[dict[str, Any], dict[str, Any]], None],
    max_inline_bytes: int = MAX_INLINE_GLB_BYTES,
    store: Any = None,
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The function RunPod calls per job (``engine`` is a loaded ``pipeline.engine.Engine``)."""

    def handler(job: dict[str, Any]) -> dict[str, Any]:
        job_id = str(job.get("id") or uuid.uuid4())
        try:
            job_input = parse_input(job.get("input"))
            data = image_bytes(job_input, settings.engine.decode.max_upload_bytes, settings.server.image_url_allowlist)
            progress = ThrottledProgress(lambda update: send_progress(job, update))
            result = engine.run(data, job_input.options, progress=progress)
        except Lift3dError as error:
            log.info("job %s failed: %s (%s)", job_id, error.message, error.code)
            return {"error": f"{error.code}: {error.message}", "refresh_worker": False}
        except Exception as error:  # noqa: BLE001 - typed for RunPod like the HTTP worker does
            typed = job_failure(error)  # CUDA out of memory, a full disk, no file descriptors left
            if typed is None:
                log.exception("job %s failed unexpectedly (%s)", job_id, type(error).__name__)
                # An unknown state: RunPod replaces this worker rather than trusting it with the next job.
                return {"error": "internal_error: internal error", "refresh_worker": True}
            log.error("job %s failed: %s", job_id, typed.code)
            if typed.code == "gpu_out_of_memory":
                error.__traceback__ = None  # its frames held the tensors
                free_gpu_cache()
            return {"error": f"{typed.code}: {typed.message}", "refresh_worker": False}
        output: dict[str, Any] = {
            "seed": result.seed,
            "weights_mode": result.weights_mode,
            "options": msgspec.to_builtins(result.options),
            "timings": result.timings,
            "qa": msgspec.to_builtins(result.qa),
            "glb_bytes": len(result.glb),
            # The licence report in brief (the GLB's extras list every artifact; docs/profiles.md).
            **licence_summary(result.metadata),
        }
        files = {"glb": result.glb}
        views = result.previews.get(VIEWS_PREVIEW) if job_input.options.return_views else None
        if views is not None:
            files["views"] = views
            output["views_bytes"] = len(views)
        try:
            if store is not None:
                output.update(_to_store(store, _store_id(job_id), files))
            elif bucket is not None:
                for kind, blob in files.items():
                    name, content_type = _FILES[kind]
                    suffix = "" if kind == "glb" else "-views"
                    output[f"{kind}_url"] = bucket.upload(f"{job_id}{suffix}{name[name.rfind('.'):]}", blob, content_type)
            elif sum(len(blob) for blob in files.values()) <= max_inline_bytes:
                for kind, blob in files.items():
                    output[f"{kind}_base64"] = base64.b64encode(blob).decode("ascii")
            else:
                total = sum(len(blob) for blob in files.values())
                return {
                    "error": f"result_too_large: the results are {total} bytes, over the {max_inline_bytes}-byte "
                    "inline limit; configure a result store (LIFT3D_RESULTS=s3://...) or BUCKET_ENDPOINT_URL, "
                    "BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY to receive a URL, or ask for fewer "
                    "target_faces / a smaller texture_size",
                    "refresh_worker": False,
                }
        except Lift3dError as error:  # storage_unavailable: retryable, the worker itself is fine
            log.warning("job %s: results not stored: %s (%s)", job_id, error.message, error.code)
            return {"error": f"{error.code}: {error.message}", "refresh_worker": False}
        return output

    return handler


# Output kind -> (artifact name in the result store, content type).
_FILES = {"glb": ("model.glb", "model/gltf-binary"), "views": ("views.png", "image/png")}
_STORE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _store_id(job_id: str) -> str:
    """RunPod's job id when it can name a store folder, else a fresh one."""
    return job_id if _STORE_ID.match(job_id) else uuid.uuid4().hex


def _to_store(store: Any, job_id: str, files: dict[str, bytes]) -> dict[str, Any]:
    """Put each result in the configured store: presigned URLs, or (client encryption) the object keys."""
    fields: dict[str, Any] = {"result_id": job_id}
    for kind, data in files.items():
        name, _ = _FILES[kind]
        store.put(job_id, name, data)
        url = store.download_url(job_id, name)
        if url is not None:
            fields[f"{kind}_url"] = url
        else:
            fields[f"{kind}_key"] = store.key_for(job_id, name)
    return fields


# Long base64 runs (images, GLBs) and the secret parts of presigned URLs.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{64,}={0,2}")
_URL_SECRET = re.compile(r"(X-Amz-(?:Signature|Credential|Security-Token)|Signature|AWSAccessKeyId)=[^&\s'\"]+")


def redact(message: str) -> str:
    """A log line without payload bytes or URL signatures (sizes kept, so it still tells something)."""
    message = _URL_SECRET.sub(lambda m: f"{m.group(1)}=<redacted>", message)
    return _BASE64_RUN.sub(lambda m: f"<{len(m.group(0))} chars redacted>", message)


def redact_sdk_log() -> None:
    """Route every line of the RunPod SDK's own logger (it prints job inputs and outputs) through ``redact``."""
    from runpod.serverless.modules.rp_logger import RunPodLogger

    original = RunPodLogger.log
    if getattr(original, "_lift3d_redacts", False):
        return

    def log_redacted(self: Any, message: Any, message_level: str = "INFO", job_id: Any = None) -> None:
        original(self, redact(str(message)), message_level, job_id)

    log_redacted._lift3d_redacts = True  # type: ignore[attr-defined]
    RunPodLogger.log = log_redacted  # type: ignore[method-assign]


def sdk_flags_problem(sdk_args: list[str]) -> str | None:
    """Flags the RunPod SDK itself does not know (it would drop them silently), or None."""
    from runpod.serverless import parser

    _, unknown = parser.parse_known_args(sdk_args)
    return f"unknown RunPod SDK flag(s): {' '.join(unknown)}" if unknown else None


def _open_store(settings: Settings) -> Any:
    """The configured result store when ``LIFT3D_RESULTS`` names a bucket; None otherwise (RunPod's bucket or inline)."""
    if not settings.storage.results.startswith("s3://"):
        return None
    from server.results import open_result_store

    store = open_result_store(settings.storage)
    store.check()  # a wrong bucket or endpoint is a start-up error, not a failed first job
    return store


def _runpod_progress(job: dict[str, Any], update: dict[str, Any]) -> None:
    import runpod

    runpod.serverless.progress_update(job, update)


def _log_progress(job: dict[str, Any], update: dict[str, Any]) -> None:
    log.info("job %s progress %s", job.get("id"), update)


def start(settings: Settings, sdk_args: list[str] | None = None, *, engine: Any = None) -> int:
    """Load and warm the engine, then hand the job loop to the RunPod SDK.

    ``sdk_args`` are the SDK's own flags (``--rp_serve_api``, ``--test_input``, ...), as
    ``lift3d runpod-worker`` collected them; None leaves ``sys.argv`` to the SDK
    (``scripts/runpod_handler.py``). ``engine`` lets tests inject one.
    """
    import runpod

    from pipeline.engine import Engine

    if sdk_args is not None:
        problem = sdk_flags_problem(sdk_args)
        if problem is not None:
            print(f"lift3d runpod-worker: {problem}", file=sys.stderr)
            return 2
        # The SDK parses sys.argv itself when it starts.
        sys.argv = [sys.argv[0], *sdk_args]
    # Workers never reach the Hub: weights are baked into the image or on the network volume.
    prepare_process(cpu_threads=settings.engine.cpu_threads)
    redact_sdk_log()
    try:
        store = _open_store(settings)
    except Lift3dError as error:
        log.error("cannot start: %s (%s)", error.message, error.code)
        return 1
    engine = engine if engine is not None else Engine(settings.engine)
    started = time.perf_counter()
    engine.load()
    engine.warmup()
    log.info("engine ready in %.1fs (weights %s)", time.perf_counter() - started, settings.engine.weights)
    # Without the SDK's webhook (local test mode) there is nowhere to post progress: log it instead.
    send = _runpod_progress if os.environ.get("RUNPOD_WEBHOOK_POST_OUTPUT") else _log_progress
    bucket = BucketConfig.from_environ(os.environ) if store is None else None
    handler = make_handler(engine, settings, bucket=bucket, send_progress=send, store=store)
    runpod.serverless.start({"handler": handler})
    return 0
