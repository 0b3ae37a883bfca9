"""The OpenAPI document, made exactly true, and the interactive docs served offline.

Litestar writes the document from the route handlers and the msgspec response types.
What it cannot know is added here, once, from the definitions the server itself runs
on: the option fields (``server.submission.SUBMIT_OPTIONS``, the same entries that
parse them), every problem+json answer of each route (``ROUTE_PROBLEMS``, with the
``code`` enum read from ``lift3d.errors``), the signed-link credential, the SSE stream,
and which routes are public. Litestar's default 400 body, which our exception
handlers never send, is dropped.

The docs and the schema are public: the schema holds no secret, and a browser opening
``/schema/swagger`` cannot send a key before the page has loaded. Requests made from
the page need the key, entered through its Authorize button. The page's scripts come
from the ``swagger-ui-bundle`` package, served here, never from a CDN.
"""

from __future__ import annotations

import copy
import mimetypes
from pathlib import Path
from typing import Any, Iterator

from litestar import Request, Response, get
from litestar.exceptions import NotFoundException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import FromPath
from litestar.router import Router

import lift3d
from lift3d import errors
from lift3d.settings import Settings
from server.auth import PUBLIC
from server.links import SIGNATURE_PARAM
from server.problems import _CODES_BY_STATUS, PROBLEM_MEDIA_TYPE
from server.submission import SUBMIT_OPTIONS
from server.uploads import RAW_IMAGE_TYPES

SCHEMA_PATH = "/schema"
SWAGGER_ASSETS = f"{SCHEMA_PATH}/assets"
# The Swagger UI files the page loads, from the pinned swagger-ui-bundle package.
SWAGGER_FILES = ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css", "favicon-32x32.png")

# Problem statuses each operation can answer, besides 401 (every route with security) and 500.
ROUTE_PROBLEMS: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/v1/jobs"): (400, 408, 413, 415, 422, 429, 503, 507),
    ("get", "/v1/jobs/{job_id}"): (404, 503),
    ("delete", "/v1/jobs/{job_id}"): (404, 503),
    ("get", "/v1/jobs/{job_id}/model.glb"): (403, 404, 409, 503),
    ("get", "/v1/jobs/{job_id}/views.png"): (403, 404, 409, 503),
    ("get", "/v1/jobs/{job_id}/events"): (403, 404, 503),
    ("get", "/v1/owners/{owner}/jobs"): (404, 422, 503),
    ("delete", "/v1/owners/{owner}"): (404, 422, 503),
    ("get", "/metrics"): (),
    ("get", "/v1/info"): (),
    ("get", "/healthz"): (),
    ("get", "/readyz"): (),
    ("get", "/demo"): (),
    ("get", "/demo/assets/{name}"): (404,),
}
SIGNED_ROUTES = {"/v1/jobs/{job_id}/model.glb", "/v1/jobs/{job_id}/views.png", "/v1/jobs/{job_id}/events"}
PUBLIC_ROUTES = {"/healthz", "/readyz", "/demo", "/demo/assets/{name}"}

SSE_EVENTS = """Each event has an `id`; reconnecting with `Last-Event-ID` (EventSource does it itself)
resumes after that event. Event types, each with a JSON `data` line:

* `status`: `{"id", "status", "queue_position"}` when the status changes (queued -> running).
* `queue`: `{"id", "queue_position"}` while queued, whenever the position changes (1 = next).
* `progress`: `{"id", "stage", "progress"}` when the stage or the fraction changes (bursts coalesced).
* `end`: exactly one, last: the full job object (as `GET /v1/jobs/{id}`); then the stream closes.

Comment lines `: keep-alive` come every 15 s while nothing else is sent."""


# One event of the stream, as SSE fields (the schema of a text/event-stream item).
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["event", "id", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["status", "queue", "progress", "end"]},
        "id": {"type": "string", "description": "opaque; send it back as Last-Event-ID to resume"},
        "data": {"type": "string", "contentMediaType": "application/json", "description": "a JSON object"},
    },
}


def problem_codes() -> list[str]:
    """Every ``code`` a problem+json body can carry: the error classes, the HTTP-level ones, the options'."""

    def walk(cls: type) -> Iterator[type]:
        yield cls
        for sub in cls.__subclasses__():
            yield from walk(sub)

    codes = {cls.code for cls in walk(errors.Lift3dError)}
    # invalid_idempotency_key: Litestar's own check of the Idempotency-Key header (its max_length).
    codes |= set(_CODES_BY_STATUS.values()) | {"http_error", "unknown_option", "invalid_idempotency_key"}
    codes |= {option.code for option in SUBMIT_OPTIONS.values()}
    return sorted(codes)


def _problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "title": "Problem",
        "description": "RFC 9457 problem details. Switch on `code`; `detail` is for people and may change.",
        "required": ["type", "title", "status", "code", "detail"],
        "properties": {
            "type": {"type": "string", "description": "urn:lift3d:problem:<code>"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "code": {"type": "string", "enum": problem_codes()},
            "detail": {"type": "string"},
            "retry_after": {"type": "integer", "description": "seconds, with 429 (also the Retry-After header)"},
        },
    }


_PROBLEM_DESCRIPTIONS = {
    400: "Malformed request (HTTP framing, Content-Length, multipart)",
    401: "No or unknown API key",
    403: "A signed link that is wrong, expired, tampered with or made for another job or file",
    404: "Unknown, erased or expired job (or file), or an owner path that names no owner",
    408: "The upload was not received in time",
    409: "The job has not finished, or did not succeed",
    413: "The upload is over LIFT3D_MAX_UPLOAD_BYTES",
    415: "Not PNG, JPEG, WebP or GIF by content, or an unsupported Content-Type",
    422: "An image or option the server refuses (see `code`)",
    429: "The queue is full; retry after Retry-After seconds",
    500: "A bug, or a stored result that fails authentication",
    503: "Draining, the models could not load, the job or result store is unavailable, or the connection cap is reached",
    507: "The result store is full",
}


def _problem_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _PROBLEM_DESCRIPTIONS.get(status, "An error (see `code`)"),
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    if status == 429:
        response["headers"] = {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1}}}
    return response


def _option_schema(name: str, settings: Settings) -> dict[str, Any]:
    option = SUBMIT_OPTIONS[name]
    maximum = settings.storage.max_retention_seconds if name == "retention_seconds" else None
    return option.json_schema(maximum=maximum)


def _submit_operation(op: dict[str, Any], settings: Settings) -> None:
    binary = {"type": "string", "format": "binary"}
    form_properties = {"image": {**binary, "description": "the photo (PNG, JPEG, WebP or GIF)"}}
    form_properties.update({name: _option_schema(name, settings) for name in SUBMIT_OPTIONS})
    op["requestBody"] = {
        "required": True,
        "description": (
            "The image: the multipart field `image` with the options as further form fields, or the whole "
            "body as a raw image with the options in the query. A form field wins over the same query parameter."
        ),
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["image"], "properties": form_properties},
                "encoding": {"image": {"contentType": ", ".join(sorted(RAW_IMAGE_TYPES))}},
            },
            **{media_type: {"schema": binary} for media_type in sorted(RAW_IMAGE_TYPES)},
        },
    }
    headers = [p for p in op.get("parameters", []) if p.get("in") == "header"]
    for header in headers:
        if header["name"] == "Idempotency-Key":
            # The handler refuses an empty or blank key itself (400 invalid_idempotency_key).
            header["schema"] = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "\\S"}
    query = [
        {"name": name, "in": "query", "required": False, "schema": _option_schema(name, settings)}
        for name in SUBMIT_OPTIONS
    ]
    op["parameters"] = headers + query
    accepted = op["responses"]["202"]
    accepted["headers"] = {
        "Location": {"required": True, "schema": {"type": "string"}, "description": "the job's URL"},
        "Idempotent-Replayed": {
            "schema": {"type": "string", "enum": ["true"]},
            "description": "set when an Idempotency-Key replay returned the existing job",
        },
    }
    job_id = {"job_id": "$response.body#/id"}
    accepted["links"] = {
        "GetJob": {"operationId": "V1JobsJobIdGetJob", "parameters": job_id},
        "DeleteJob": {"operationId": "V1JobsJobIdDeleteJob", "parameters": job_id},
        "JobEvents": {"operationId": "V1JobsJobIdEventsJobEvents", "parameters": job_id},
        "GetModel": {"operationId": "V1JobsJobIdModelGlbGetModel", "parameters": job_id},
        "GetViews": {"operationId": "V1JobsJobIdViewsPngGetViews", "parameters": job_id},
    }


def _binary_response(op: dict[str, Any], media_type: str, description: str) -> None:
    ok = op["responses"]["200"]
    ok["description"] = description
    ok["content"] = {media_type: {"schema": {"type": "string", "format": "binary"}}}


def finish_document(document: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Litestar's generated document with what only the server's own definitions know."""
    doc = copy.deepcopy(document)
    doc["components"].setdefault("schemas", {})["Problem"] = _problem_schema()
    doc["components"]["securitySchemes"]["signedLink"] = {
        "type": "apiKey",
        "in": "query",
        "name": SIGNATURE_PARAM,
        "description": "A signed job link from `signed_links` (no API key needed; expires).",
    }
    for path, item in doc["paths"].items():
        for method, op in item.items():
            # A route missing here still gets 401/500; tests/server/test_openapi.py asks for an entry.
            statuses = ROUTE_PROBLEMS.get((method, path), ())
            responses = {code: body for code, body in op.get("responses", {}).items() if not code.startswith(("4", "5"))}
            public = path in PUBLIC_ROUTES
            # 400 (framing h11 cannot parse) and 503 (the connection cap) come from below the app, on any route.
            problem_statuses = set(statuses) | {400, 500, 503} | (set() if public else {401})
            for status in sorted(problem_statuses):
                responses[str(status)] = _problem_response(status)
            op["responses"] = responses
            if public:
                op["security"] = []
            elif path in SIGNED_ROUTES:
                op["security"] = [{"bearer": []}, {"signedLink": []}]
    jobs = doc["paths"]
    _submit_operation(jobs["/v1/jobs"]["post"], settings)
    events = jobs["/v1/jobs/{job_id}/events"]["get"]
    events["description"] = SSE_EVENTS
    events["responses"]["200"]["description"] = "The event stream"
    events["responses"]["200"]["content"] = {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}
    events["responses"]["204"] = {"description": "Last-Event-ID named the `end` event: nothing more will come"}
    _binary_response(jobs["/v1/jobs/{job_id}/model.glb"]["get"], "model/gltf-binary", "The model (binary glTF)")
    jobs["/v1/jobs/{job_id}/model.glb"]["get"]["responses"]["200"]["headers"] = {
        "Content-Disposition": {"schema": {"type": "string"}, "description": 'attachment; filename="<id>.glb"'}
    }
    _binary_response(jobs["/v1/jobs/{job_id}/views.png"]["get"], "image/png", "The six views, 3 rows x 2 columns")
    metrics = jobs["/metrics"]["get"]["responses"]["200"]
    metrics["content"] = {"text/plain": {"schema": {"type": "string"}}}
    readyz = jobs["/readyz"]["get"]["responses"]
    readyz["503"] = {
        "description": "Not ready: `detail` says why (warming_up, draining, or an engine error code); "
        "problem+json `too_many_connections` at the connection cap",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Health"}},
            **readyz["503"]["content"],
        },
    }
    if "/demo" in jobs:
        jobs["/demo"]["get"]["responses"]["200"]["content"] = {"text/html": {"schema": {"type": "string"}}}
        asset = jobs["/demo/assets/{name}"]["get"]["responses"]["200"]
        asset["content"] = {
            "text/javascript": {"schema": {"type": "string"}},
            "text/css": {"schema": {"type": "string"}},
        }
    return doc


class TrueJson(JsonRenderPlugin):
    """``/schema/openapi.json``: the finished document."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self._finished: dict[str, Any] | None = None

    def finished(self, generated: dict[str, Any]) -> dict[str, Any]:
        if self._finished is None:
            self._finished = finish_document(generated, self.settings)
        return self._finished

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, self.finished(openapi_schema))


def as_openapi_30(node: Any) -> Any:
    """The document in OpenAPI 3.0 terms, for the page only: the pinned Swagger UI (4.15) renders
    3.0 and refuses 3.1. Only how nullable and constant values are spelled changes; the
    document served at /schema/openapi.json stays 3.1."""
    if isinstance(node, list):
        return [as_openapi_30(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: as_openapi_30(value) for key, value in node.items()}
    if isinstance(out.get("type"), list):
        types = [t for t in out["type"] if t != "null"]
        out["type"] = types[0] if len(types) == 1 else "object"
        if len(types) < len(node["type"]):
            out["nullable"] = True
    for key in ("oneOf", "anyOf"):
        options = out.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            out.pop(key)
            out["nullable"] = True
            if len(rest) == 1:
                out = {**rest[0], **out}
            else:
                out[key] = rest
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if isinstance(out.get("examples"), list) and "properties" in out:
        out["example"] = out.pop("examples")[0] if out["examples"] else None
    if isinstance(out.get("openapi"), str):
        out["openapi"] = "3.0.3"
    return out


class OfflineSwagger(SwaggerRenderPlugin):
    """``/schema/swagger``: Swagger UI on the finished document, its files served from this server."""

    def __init__(self, json_plugin: TrueJson) -> None:
        super().__init__(
            path="/swagger",
            js_url=f"{SWAGGER_ASSETS}/swagger-ui-bundle.js",
            css_url=f"{SWAGGER_ASSETS}/swagger-ui.css",
            standalone_preset_js_url=f"{SWAGGER_ASSETS}/swagger-ui-standalone-preset.js",
            favicon=f"<link rel='icon' type='image/png' href='{SWAGGER_ASSETS}/favicon-32x32.png'>",
        )
        self.json_plugin = json_plugin

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, as_openapi_30(self.json_plugin.finished(openapi_schema)))


def _swagger_dir() -> Path:
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


@get("/assets/{name:str}", include_in_schema=False)
async def swagger_asset(name: FromPath[str]) -> Response[bytes]:
    if name not in SWAGGER_FILES:
        raise NotFoundException("no such asset")
    path = _swagger_dir() / name
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if media_type.startswith("text/") or name.endswith(".js"):
        media_type = ("text/javascript" if name.endswith(".js") else media_type) + "; charset=utf-8"
    return Response(path.read_bytes(), media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})


def openapi_config(settings: Settings) -> OpenAPIConfig:
    json_plugin = TrueJson(settings)
    return OpenAPIConfig(
        title="lift3d",
        version=lift3d.__version__,
        description=(
            "One photo in, a textured 3D model (GLB) out. Errors are RFC 9457 problem+json with a stable `code`.\n\n"
            "This page and the schema are public; the API is not. Press **Authorize** and enter an API key "
            "(one of LIFT3D_API_KEYS, or the generated `<data dir>/api_key`) to try requests from here. "
            "Job files also open with the signed links of `signed_links`, without a key."
        ),
        render_plugins=[OfflineSwagger(json_plugin), json_plugin],
        # Public: the guard skips handlers with this opt (the document holds no secret).
        openapi_router=Router(SCHEMA_PATH, route_handlers=[swagger_asset], include_in_schema=False, opt=PUBLIC),
        components=Components(
            security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", description="an API key")}
        ),
        security=[{"bearer": []}],
    )
