"""API v1 route handlers. They read and enqueue; the GPU worker does the work."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Any, AsyncIterator

import anyio
import msgspec
from litestar import HttpMethod, Request, Response, delete, get, post, route
from litestar.datastructures import State
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromPath, HeaderParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from lift3d.errors import BadRequest, InvalidOption, JobNotFound, QueueFull, UnsupportedFormat
from lift3d.settings import Settings
from pipeline.decode import decode_image
from pipeline.wipe import wipe_image
from server.auth import PUBLIC, signable
from server.links import EVENTS, LinkSigner
from pipeline.options import default_pipeline
from server.info import background_provider, build_info, pipeline_infos
from server.jobstore import ACTIVE, ENDED
from server.owners import owner_from_raw_path
from server.schemas import (
    MODEL_FILE,
    VIEWS_FILE,
    Health,
    Info,
    JobAccepted,
    JobView,
    ModelInfo,
    OwnerJobs,
    job_links,
    job_view,
    signed_links,
)
from server.submission import parse_submission
from server.limits import UploadBudget, timed_chunks
from server.uploads import (
    FORM_OVERHEAD_BYTES,
    RAW_IMAGE_TYPES,
    Upload,
    check_declared_length,
    read_multipart_image,
    read_raw_image,
)
from server.storage import Storage
from server.worker import JobManager

GLB_MEDIA_TYPE = "model/gltf-binary"
# Decoding is CPU work next to the GPU worker: at most two uploads validate at once.
_DECODE_SLOTS = anyio.CapacityLimiter(2)


@dataclass
class Services:
    settings: Settings
    manager: JobManager
    storage: Storage
    signer: LinkSigner
    # What /v1/info lists, read from weights.lock once at start-up.
    models: list[ModelInfo] = field(default_factory=list)
    upload_budget: UploadBudget | None = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.upload_budget is None:
            self.upload_budget = UploadBudget.from_settings(self.settings)


def services(state: State) -> Services:
    return state.services


def _job_view(svc: Services, job_id: str, link_expires: int | None = None) -> JobView:
    """The job as clients see it. ``link_expires``: the request came with a signed link, not the
    key; every link in the view then expires with it, and presigned bucket URLs (their own
    lifetime) are left out, so holding one link never yields a longer-lived one."""
    record = svc.storage.job(job_id)
    live = svc.manager.live(job_id)
    if live is not None and live.status in ACTIVE:
        return job_view(
            record,
            live_status=live.status,
            live_stage=live.stage,
            live_progress=live.progress,
            queue_position=svc.manager.queue_position(job_id),
            signer=svc.signer,
            link_expires=link_expires,
        )
    downloads = svc.storage.download_links(record) if link_expires is None else None
    return job_view(record, signer=svc.signer, downloads=downloads, link_expires=link_expires)


# -- jobs ----------------------------------------------------------------------

_BINARY = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)


@dataclass
class _SubmitOperation(Operation):
    """Documents the upload body, which the handler reads itself (so Litestar never parses or spools it)."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            description="The image: multipart field `image` (options may be further form fields), or a raw body.",
            content={
                "multipart/form-data": OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.OBJECT, required=["image"], properties={"image": _BINARY})
                ),
                **{media_type: OpenAPIMediaType(schema=_BINARY) for media_type in sorted(RAW_IMAGE_TYPES)},
            },
        )


@post(
    "/v1/jobs",
    status_code=HTTP_202_ACCEPTED,
    # The byte cap is enforced while streaming (server.uploads), with the problem+json 413.
    request_max_body_size=None,
    operation_class=_SubmitOperation,
    summary="Submit an image",
    description=(
        "Send the image as the multipart/form-data field `image`, or as a raw body with "
        "Content-Type image/png, image/jpeg, image/webp or image/gif. Options go in form fields or the query. "
        "Answers 202 with the job id; follow `links.events` (SSE) or poll `links.self`."
    ),
    tags=["jobs"],
)
async def submit_job(
    request: Request[Any, Any, State],
    state: State,
    idempotency_key: Annotated[
        str | None,
        HeaderParameter(name="Idempotency-Key", description="same key + same request = same job", max_length=200),
    ] = None,
) -> Response[JobAccepted]:
    svc = services(state)
    if idempotency_key is not None and not idempotency_key.strip():
        raise BadRequest("the Idempotency-Key header is empty: send a key, or no header", code="invalid_idempotency_key")
    cap = svc.settings.engine.decode.max_upload_bytes
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        limit = cap + FORM_OVERHEAD_BYTES
    elif media_type in RAW_IMAGE_TYPES:
        limit = cap
    else:
        raise UnsupportedFormat(
            "send multipart/form-data with an `image` field, or a raw image/png, image/jpeg, image/webp or image/gif body"
        )
    declared = check_declared_length(request.headers.get("content-length"), limit, cap)
    # From the headers alone: a full queue, or too many bytes already arriving, refuse before the body is read.
    _refuse_when_queue_full(svc, idempotency_key)
    with svc.upload_budget.reserve(limit if declared is None else declared):
        server = svc.settings.server
        chunks = timed_chunks(
            request.stream(), idle_s=server.body_idle_timeout_seconds, total_s=server.body_timeout_seconds
        )
        if media_type == "multipart/form-data":
            upload = await read_multipart_image(chunks, content_type, cap, declared)
        else:
            upload = await read_raw_image(chunks, cap, declared)
        return await _accept(request, svc, upload, idempotency_key)


def _refuse_when_queue_full(svc: Services, idempotency_key: str | None) -> None:
    manager = svc.manager
    if manager.queue_depth() < svc.settings.server.queue_size:
        return
    # A replayed Idempotency-Key is answered with its job even when the queue is full.
    if idempotency_key is not None and svc.storage.store.find_by_idempotency_key(idempotency_key) is not None:
        return
    manager.metrics.jobs_rejected.labels(QueueFull.code).inc()
    raise QueueFull(
        f"the queue is full ({svc.settings.server.queue_size} jobs waiting); retry later",
        retry_after_seconds=manager.retry_after_seconds(),
    )


async def _accept(
    request: Request[Any, Any, State], svc: Services, upload: Upload, idempotency_key: str | None
) -> Response[JobAccepted]:
    # Both sources are parsed in full by the one parser (a bad query value is refused even when a
    # form field overrides it); then the form wins.
    query: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key in query:
            raise InvalidOption(f"query parameter {key!r} is given more than once")
        query[key] = value
    parse_submission(query, svc.settings)
    submission = parse_submission({**query, **upload.fields}, svc.settings)
    image = upload.image
    upload.image = b""
    await anyio.to_thread.run_sync(_validate_image, image, svc.settings, limiter=_DECODE_SLOTS)

    new_job = submission.new_job(image, weights_mode=svc.settings.engine.weights, idempotency_key=idempotency_key)
    record, created = svc.manager.submit(image, submission.options, new_job)
    del image
    links = job_links(record.id, submission.options.return_views)
    body = JobAccepted(
        id=record.id,
        status=record.status,  # type: ignore[arg-type]
        queue_position=svc.manager.queue_position(record.id),
        links=links,
        signed_links=signed_links(links, record.id, svc.signer),
    )
    headers = {"Location": links.self}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return Response(body, status_code=HTTP_202_ACCEPTED, headers=headers)


def _validate_image(data: bytes, settings: Settings) -> None:
    """Decode once at submit so bad images are a 4xx now, not a failed job later."""
    decoded = decode_image(data, settings.engine.decode)
    wipe_image(decoded)
    decoded.close()


@get("/v1/jobs/{job_id:str}", summary="A job's status, progress, timings and result", tags=["jobs"])
async def get_job(job_id: FromPath[str], state: State) -> JobView:
    return _job_view(services(state), job_id)


@delete(
    "/v1/jobs/{job_id:str}",
    status_code=HTTP_204_NO_CONTENT,
    summary="Cancel the job if it is active and erase it with its results",
    tags=["jobs"],
)
async def delete_job(job_id: FromPath[str], state: State) -> None:
    svc = services(state)
    record = await anyio.to_thread.run_sync(svc.storage.erase_job, job_id)
    if record is None:
        raise JobNotFound("no such job")
    svc.manager.forget([record])


@route("/v1/jobs/{job_id:str}", http_method=[HttpMethod.OPTIONS], include_in_schema=False)
async def job_options() -> Response[None]:
    # Litestar answers OPTIONS for a path served by two handlers with the first one's methods
    # only; this one lists both. (CORS preflight is answered by the CORS middleware before routing.)
    return Response(None, status_code=HTTP_204_NO_CONTENT, headers={"Allow": "DELETE, GET, OPTIONS"})


async def _result_bytes(svc: Services, job_id: str, name: str) -> bytes:
    return await anyio.to_thread.run_sync(svc.storage.read, job_id, name)


@get(
    "/v1/jobs/{job_id:str}/model.glb",
    summary="The textured model (binary glTF)",
    media_type=GLB_MEDIA_TYPE,
    opt=signable(MODEL_FILE),
    tags=["jobs"],
)
async def get_model(job_id: FromPath[str], state: State) -> Response[bytes]:
    data = await _result_bytes(services(state), job_id, MODEL_FILE)
    return Response(
        data,
        media_type=GLB_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{job_id}.glb"', "Cache-Control": "private, no-store"},
    )


@get(
    "/v1/jobs/{job_id:str}/views.png",
    summary="The six generated views (3 rows x 2 columns), when return_views was set",
    media_type="image/png",
    opt=signable(VIEWS_FILE),
    tags=["jobs"],
)
async def get_views(job_id: FromPath[str], state: State) -> Response[bytes]:
    data = await _result_bytes(services(state), job_id, VIEWS_FILE)
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, no-store"})


@get(
    "/v1/jobs/{job_id:str}/events",
    summary="Server-sent events: `status`, `queue` and `progress` while active, then one `end` event",
    opt=signable(EVENTS),
    tags=["jobs"],
)
async def job_events(
    job_id: FromPath[str],
    state: State,
    request: Request[Any, Any, State],
    last_event_id: Annotated[
        str | None,
        HeaderParameter(name="Last-Event-ID", description="the `id` of the last event received: resume after it"),
    ] = None,
) -> Response[Any]:
    svc = services(state)
    link_expires = getattr(request.state, "link_expires", None)
    _job_view(svc, job_id)  # 404 before the stream starts
    if last_event_id == END_EVENT_ID:
        # The client has the `end` already; 204 is how SSE tells EventSource to stop reconnecting.
        return Response(b"", status_code=HTTP_204_NO_CONTENT)
    seen = StreamState.parse(last_event_id)
    return ServerSentEvent(
        _event_stream(svc, job_id, seen, link_expires), headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )


END_EVENT_ID = "end"


@dataclass
class StreamState:
    """What a client has been told about a job; every event's ``id`` encodes it, so a reconnect
    (``Last-Event-ID``) resumes from exactly there. Events are coalesced snapshots, not a log:
    resuming sends what changed since, never a repeat, and the ``end`` event is never lost."""

    status: str | None = None
    queue_position: int | None = None
    stage: str | None = None
    progress: float | None = None

    def event_id(self) -> str:
        progress = "-" if self.progress is None else f"{self.progress:.4f}"
        queue = "-" if self.queue_position is None else str(self.queue_position)
        return f"{self.status or '-'}.{queue}.{self.stage or '-'}.{progress}"

    @classmethod
    def parse(cls, text: str | None) -> "StreamState":
        """The state an id names; anything unreadable means "told nothing" (a fresh stream)."""
        parts = (text or "").split(".", 3)
        if len(parts) != 4:
            return cls()
        status, queue, stage, progress = parts
        try:
            return cls(
                status=None if status == "-" else status,
                queue_position=None if queue == "-" else int(queue),
                stage=None if stage == "-" else stage,
                progress=None if progress == "-" else float(progress),
            )
        except ValueError:
            return cls()


def _event(name: str, payload: Any, event_id: str) -> ServerSentEventMessage:
    return ServerSentEventMessage(event=name, data=msgspec.json.encode(payload).decode(), id=event_id)


async def _event_stream(
    svc: Services, job_id: str, seen: StreamState, link_expires: int | None = None
) -> AsyncIterator[ServerSentEventMessage]:
    keepalive = svc.settings.server.sse_keepalive_seconds
    live = svc.manager.live(job_id)
    watcher = live.watch() if live is not None else None
    try:
        while True:
            view = _job_view_or_gone(svc, job_id, link_expires)
            if view.status in ENDED:
                yield _event("end", view, END_EVENT_ID)
                return
            if view.status != seen.status:
                seen.status, seen.queue_position = view.status, view.queue_position
                payload = {"id": job_id, "status": view.status, "queue_position": view.queue_position}
                yield _event("status", payload, seen.event_id())
            elif view.status == "queued" and view.queue_position != seen.queue_position:
                seen.queue_position = view.queue_position
                yield _event("queue", {"id": job_id, "queue_position": view.queue_position}, seen.event_id())
            progress = round(view.progress, 4)
            if (view.stage, progress) != (seen.stage, seen.progress):
                seen.stage, seen.progress = view.stage, progress
                yield _event("progress", {"id": job_id, "stage": view.stage, "progress": view.progress}, seen.event_id())
            if watcher is None:
                # Not live in this process any more (it ended between reads): poll once more.
                await asyncio.sleep(0.2)
                continue
            event = watcher[1]
            try:
                await asyncio.wait_for(event.wait(), timeout=keepalive)
            except TimeoutError:
                yield ServerSentEventMessage(comment="keep-alive", data=None)
            event.clear()
    finally:
        if live is not None and watcher is not None:
            live.unwatch(watcher)


def _job_view_or_gone(svc: Services, job_id: str, link_expires: int | None = None) -> JobView:
    try:
        return _job_view(svc, job_id, link_expires)
    except JobNotFound:
        # Erased while streaming: the stream ends with a cancelled job that has no record left.
        return JobView(id=job_id, status="cancelled", links=job_links(job_id))


# -- owners (data-subject requests) --------------------------------------------


def _raw_path(request: Request[Any, Any, State]) -> bytes:
    # The bytes the client sent: the router's path is already decoded and collapsed.
    raw = request.scope.get("raw_path")
    return raw if isinstance(raw, bytes) else request.scope["path"].encode()


@get("/v1/owners/{owner:str}/jobs", summary="Every live job of an owner", tags=["owners"])
async def list_owner_jobs(owner: FromPath[str], request: Request[Any, Any, State], state: State) -> OwnerJobs:
    svc = services(state)
    owner = owner_from_raw_path(_raw_path(request), owner, listing=True)
    records = svc.storage.owner_jobs(owner)
    return OwnerJobs(owner=owner, jobs=[_job_view(svc, record.id) for record in records])


@delete(
    "/v1/owners/{owner:str}",
    status_code=HTTP_204_NO_CONTENT,
    summary="Erase every job and result of an owner (account deletion)",
    tags=["owners"],
)
async def delete_owner(owner: FromPath[str], request: Request[Any, Any, State], state: State) -> None:
    svc = services(state)
    owner = owner_from_raw_path(_raw_path(request), owner, listing=False)
    records = await anyio.to_thread.run_sync(svc.storage.erase_owner, owner)
    svc.manager.forget(records)


# -- system ------------------------------------------------------------------------


@get("/healthz", opt=PUBLIC, summary="Liveness: the process answers", tags=["system"])
async def healthz() -> Health:
    return Health(status="ok")


@get("/readyz", opt=PUBLIC, summary="Readiness: models loaded and warm, not draining", tags=["system"])
async def readyz(state: State) -> Response[Health]:
    svc = services(state)
    reason = svc.manager.not_ready_reason()
    if reason is None:
        # The result store last: a bucket that does not answer cannot take results (S3 only).
        reason = await anyio.to_thread.run_sync(svc.storage.store_problem)
    if reason is None:
        return Response(Health(status="ready"))
    return Response(Health(status="unavailable", detail=reason), status_code=503)


@get("/metrics", summary="Prometheus metrics", media_type="text/plain; version=0.0.4", tags=["system"])
async def metrics(state: State) -> Response[bytes]:
    data = await anyio.to_thread.run_sync(services(state).manager.metrics.render)
    # Litestar appends "; charset=utf-8" to text types itself; naming it here would repeat it,
    # and Prometheus refuses a media type with a repeated parameter.
    return Response(data, media_type="text/plain; version=0.0.4")


@get("/v1/info", summary="Version, profile, device and pinned models", tags=["system"])
async def info(state: State) -> Info:
    svc = services(state)
    engine = svc.manager.engine
    default = default_pipeline(svc.settings.engine)
    pipelines = pipeline_infos({name: engine.licences.get(name, []) for name in engine.pipelines}, default)
    return build_info(
        svc.settings, engine.runtime, svc.manager.ready, svc.models, pipelines, provider=background_provider(engine)
    )


ROUTES = [
    job_options,  # before get_job and delete_job, so Litestar adds no OPTIONS handler of its own
    submit_job,
    get_job,
    delete_job,
    get_model,
    get_views,
    job_events,
    list_owner_jobs,
    delete_owner,
    healthz,
    readyz,
    metrics,
    info,
]

__all__ = ["ROUTES", "Services"]
