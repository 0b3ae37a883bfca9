"""RFC 9457 problem+json errors with a stable machine ``code``.

Every error the API returns goes through here, so clients can switch on ``code``
without parsing prose. Messages never echo request bytes, filenames or tokens.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any, Mapping

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from lift3d import errors
from lift3d.errors import Lift3dError

log = logging.getLogger("lift3d.server")

PROBLEM_MEDIA_TYPE = "application/problem+json"
# A URN, not a URL: the project owns no domain to host problem pages on, and RFC 9457
# allows any URI; the stable `code` member is what clients switch on.
PROBLEM_TYPE_BASE = "urn:lift3d:problem:"

# Codes for HTTP-level failures that Litestar raises itself (routing, auth, validation).
_CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "upload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "queue_full",
    500: "internal_error",
    503: "unavailable",
}

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
    504: "Deadline exceeded",
    507: "Insufficient storage",
}

# The one table from domain errors to HTTP statuses. The most specific class wins
# (looked up along the error's MRO), so a new error inherits its family's status.
HTTP_STATUS: dict[type[Lift3dError], int] = {
    errors.Lift3dError: 500,
    errors.InputError: 422,
    errors.BadRequest: 400,
    errors.RequestTimeout: 408,
    errors.UnsupportedFormat: 415,
    errors.UploadTooLarge: 413,
    errors.JobNotFound: 404,
    errors.LinkSignatureInvalid: 403,
    errors.JobNotFinished: 409,
    errors.JobNotSucceeded: 409,
    errors.JobCancelled: 409,
    errors.DeadlineExceeded: 504,
    errors.Unavailable: 503,
    errors.QueueFull: 429,
    # RFC 4918's Insufficient Storage: the request was fine, the disk is not.
    errors.StorageFull: 507,
    errors.StorageUnavailable: 503,
}


def http_status(error: Lift3dError) -> int:
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]  # type: ignore[index]
    return 500


def problem_body(status: int, code: str, detail: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The RFC 9457 members every lift3d problem has."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "code": code,
        "detail": detail,
    }
    body.update(extra or {})
    return body


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Response[dict[str, Any]]:
    body = problem_body(status, code, detail, extra)
    return Response(content=body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=dict(headers or {}))


def error_problem(error: Lift3dError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) of a domain error, for the app's handler and for server/limits.py below it."""
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    retry_after = getattr(error, "retry_after_seconds", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
        extra["retry_after"] = retry_after
    # An error may carry machine-readable members of its own (e.g. the loaded pipelines).
    extra.update(getattr(error, "problem_fields", None) or {})
    status = http_status(error)
    return status, problem_body(status, error.code, error.message, extra), headers


def error_response(error: Lift3dError) -> Response[dict[str, Any]]:
    status, body, headers = error_problem(error)
    return Response(content=body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _lift3d_error_handler(_: Request, exc: Lift3dError) -> Response[dict[str, Any]]:
    return error_response(exc)


def _http_exception_handler(_: Request, exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    code = _CODES_BY_STATUS.get(status, "http_error")
    headers = dict(exc.headers or {})
    if isinstance(exc, NotAuthorizedException):
        headers.setdefault("WWW-Authenticate", 'Bearer realm="lift3d"')
    if isinstance(exc, ValidationException):
        # A typed query parameter Litestar refused: name it like our own option checks do.
        status, code = 422, "invalid_option"
        keys = [item.get("key") for item in exc.extra or [] if isinstance(item, dict)] if isinstance(exc.extra, list) else []
        if len(keys) == 1 and isinstance(keys[0], str) and keys[0].isidentifier():
            code = f"invalid_{keys[0]}"
            return problem_response(status, code, f"option {keys[0]!r} has an invalid value", headers=headers)
    return problem_response(status, code, str(exc.detail), headers=headers)


def _unexpected_error_handler(_: Request, exc: Exception) -> Response[dict[str, Any]]:
    # The frames, not the message: a message could quote request data.
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("unhandled error %s at:\n%s", type(exc).__name__, frames)
    return problem_response(HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "internal error")


EXCEPTION_HANDLERS = {
    Lift3dError: _lift3d_error_handler,
    HTTPException: _http_exception_handler,
    Exception: _unexpected_error_handler,
}

__all__ = ["EXCEPTION_HANDLERS", "HTTP_STATUS", "PROBLEM_MEDIA_TYPE", "error_response", "http_status", "problem_response"]
