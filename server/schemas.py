"""The JSON shapes of API v1 (typed, so OpenAPI at /schema documents them)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import msgspec

from server.jobstore import JOB_STATUSES, JobRecord, JobStatus
from server.links import EVENTS, LinkSigner

# The stored artifacts of a job, by file name (also the last segment of their routes).
MODEL_FILE = "model.glb"
VIEWS_FILE = "views.png"


class JobLinks(msgspec.Struct, kw_only=True):
    self: str
    events: str
    model: str
    views: str | None = None
    # Presigned GET URLs straight from the bucket (provider-encrypted S3 results only), short-lived.
    model_download: str | None = None
    views_download: str | None = None


class SignedLinks(msgspec.Struct, kw_only=True):
    """The job's files as short-lived links that need no API key (for a browser); see docs/api.md."""

    events: str
    model: str
    views: str | None = None
    expires_at: str


class JobError(msgspec.Struct, kw_only=True):
    code: str
    message: str


class JobAccepted(msgspec.Struct, kw_only=True):
    id: str
    status: JobStatus
    queue_position: int | None
    links: JobLinks
    signed_links: SignedLinks | None = None


class JobView(msgspec.Struct, kw_only=True):
    id: str
    status: JobStatus
    stage: str | None = None
    progress: float = 0.0
    queue_position: int | None = None
    owner: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    expires_at: str | None = None
    timings: dict[str, float] = {}
    seed: int | None = None
    options: dict[str, Any] = {}
    weights_mode: str | None = None
    error: JobError | None = None
    result: dict[str, Any] | None = None
    webhook_status: str | None = None
    links: JobLinks
    signed_links: SignedLinks | None = None


class OwnerJobs(msgspec.Struct, kw_only=True):
    owner: str
    jobs: list[JobView]


class ModelInfo(msgspec.Struct, kw_only=True):
    name: str
    repo: str | None = None
    revision: str | None = None
    license: str | None = None


class ArtifactLicence(msgspec.Struct, kw_only=True):
    path: str
    stage: str
    licence: str
    commercial_use: bool
    # "weights", or "architecture only (tiny weights)" where a random-init model stands in for the file.
    use: str


class PipelineInfo(msgspec.Struct, kw_only=True):
    name: str
    default: bool
    # False where any artifact's licence forbids commercial use (CC-BY-NC-4.0).
    commercial_use: bool
    artifacts: list[ArtifactLicence]


class Limits(msgspec.Struct, kw_only=True):
    max_upload_bytes: int
    max_pixels: int
    queue_size: int
    job_deadline_seconds: float
    default_retention_seconds: int
    max_retention_seconds: int


class Info(msgspec.Struct, kw_only=True):
    version: str
    profile: str
    weights_mode: str
    device: str
    dtype: str
    ready: bool
    models: list[ModelInfo]
    limits: Limits
    # The server profile (fast|quality|all) and the pipelines it loaded, each with its licence report.
    server_profile: str = "quality"
    pipelines: list[PipelineInfo] = []
    # The onnxruntime execution provider background removal runs on (CUDAExecutionProvider,
    # CPUExecutionProvider; "none" for the weightless heuristic), null until the engine loaded.
    background_provider: str | None = None


class Health(msgspec.Struct, kw_only=True):
    status: str
    detail: str | None = None


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def job_links(
    job_id: str, with_views: bool = False, base_url: str = "", *, downloads: dict[str, str] | None = None
) -> JobLinks:
    """The job's routes; relative unless a public base URL is known (webhooks).

    ``downloads`` maps artifact names to presigned URLs (``Storage.download_links``).
    """
    base = f"{base_url.rstrip('/')}/v1/jobs/{job_id}"
    downloads = downloads or {}
    return JobLinks(
        self=base,
        events=f"{base}/events",
        model=f"{base}/{MODEL_FILE}",
        views=f"{base}/{VIEWS_FILE}" if with_views else None,
        model_download=downloads.get(MODEL_FILE),
        views_download=downloads.get(VIEWS_FILE) if with_views else None,
    )


def signed_links(links: JobLinks, job_id: str, signer: LinkSigner, expires: int | None = None) -> SignedLinks:
    """Links for ``job_id``'s files, valid until ``expires`` (default: the signer's TTL from now)."""
    expires = signer.expires_at() if expires is None else expires
    return SignedLinks(
        events=signer.url(links.events, job_id, EVENTS, expires),
        model=signer.url(links.model, job_id, MODEL_FILE, expires),
        views=signer.url(links.views, job_id, VIEWS_FILE, expires) if links.views else None,
        expires_at=iso(expires) or "",
    )


def job_view(
    record: JobRecord,
    *,
    signer: LinkSigner | None = None,
    live_status: str | None = None,
    live_stage: str | None = None,
    live_progress: float | None = None,
    queue_position: int | None = None,
    downloads: dict[str, str] | None = None,
    link_expires: int | None = None,
) -> JobView:
    status = live_status or record.status
    if status not in JOB_STATUSES:
        status = record.status
    error = JobError(code=record.error_code, message=record.error_message or "") if record.error_code else None
    succeeded = record.status == "succeeded"
    links = job_links(record.id, VIEWS_FILE in record.artifacts, downloads=downloads if succeeded else None)
    return JobView(
        id=record.id,
        status=status,  # type: ignore[arg-type]
        stage=live_stage if live_stage is not None else record.stage,
        progress=1.0 if succeeded else (live_progress if live_progress is not None else record.progress),
        queue_position=queue_position,
        owner=record.owner,
        created_at=iso(record.created_at),
        started_at=iso(record.started_at),
        finished_at=iso(record.finished_at),
        expires_at=iso(record.expires_at),
        timings=dict(record.timings),
        seed=record.seed,
        options=dict(record.options),
        weights_mode=record.weights_mode,
        error=error,
        result=dict(record.result) if succeeded else None,
        webhook_status=record.webhook_status,
        links=links,
        signed_links=signed_links(links, record.id, signer, link_expires) if signer is not None else None,
    )
