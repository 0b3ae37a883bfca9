"""Turning the form fields / query parameters of ``POST /v1/jobs`` into typed options.

Each field's definition (type, range, words, description) is a ``pipeline.options.Option``:
the engine's options from ``pipeline.options.ENGINE_OPTIONS``, the job's data options here.
The same definitions write the OpenAPI document (``server.openapi``). Retention and webhook
targets are checked once more, against settings, by :meth:`server.storage.Storage.new_job`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import msgspec

from lift3d.settings import Settings
from lift3d.errors import InvalidOption
from pipeline.options import ENGINE_OPTIONS, OPTIONS_BY_NAME, JobOptions, Option, resolve_options
from server.owners import MAX_OWNER_CHARS, check_owner
from server.storage import NewJob, request_hash, resolve_retention

# server.owners' grammar as a schema pattern (empty = no owner); check_owner stays the authority.
OWNER_PATTERN = r"(?:(?!\.+$)[A-Za-z0-9._:@-]{1,%d})?" % MAX_OWNER_CHARS

# Options about the job's data, handled by the server (retention and webhook are checked by Storage).
JOB_OPTIONS: tuple[Option, ...] = (
    Option(
        "owner", "string", "The web app's opaque user id, for listing and erasure: 1-128 of A-Z a-z 0-9 . _ : @ -, not only dots.",
        max_length=MAX_OWNER_CHARS, pattern=OWNER_PATTERN,
    ),
    Option(
        "retention_seconds", "integer", "How long results live after the job ends; at most LIFT3D_MAX_RETENTION_SECONDS.",
        minimum=1, default_doc="LIFT3D_RETENTION_SECONDS (24 h)",
    ),
    Option("webhook_url", "string", "An http(s) URL on LIFT3D_WEBHOOK_ALLOWLIST, told when the job ends."),
)
# Every field a submission may carry, in the order the OpenAPI document lists them.
SUBMIT_OPTIONS: dict[str, Option] = {option.name: option for option in (*ENGINE_OPTIONS, *JOB_OPTIONS)}


@dataclass(frozen=True)
class Submission:
    options: JobOptions
    owner: str | None
    retention_seconds: int | None
    webhook_url: str | None

    def fingerprint(self, image: bytes) -> str:
        """What "the same request" means for Idempotency-Key: the image and every option."""
        fields = {
            "options": msgspec.to_builtins(self.options),
            "owner": self.owner,
            "retention_seconds": self.retention_seconds,
            "webhook_url": self.webhook_url,
        }
        return request_hash(image, fields)

    def new_job(self, image: bytes, *, weights_mode: str, idempotency_key: str | None) -> NewJob:
        return NewJob(
            options=msgspec.to_builtins(self.options),
            request_hash=self.fingerprint(image),
            weights_mode=weights_mode,
            owner=self.owner,
            retention_seconds=self.retention_seconds,
            webhook_url=self.webhook_url,
            idempotency_key=idempotency_key,
        )


def parse_submission(fields: Mapping[str, str], settings: Settings) -> Submission:
    """Typed options from strings; every problem is an ``InvalidOption`` (422) with a specific code.

    The query string, the multipart form fields and a raw body's query all arrive here as
    strings, so each value has one grammar (``Option.parse_value``) whichever way it came.
    """
    values: dict[str, Any] = {}
    for name, raw in fields.items():
        option = SUBMIT_OPTIONS.get(name)
        if option is None:
            raise InvalidOption(f"unknown option {name!r}", code="unknown_option")
        values[name] = option.parse_value(raw)

    options = JobOptions(**{k: v for k, v in values.items() if k in OPTIONS_BY_NAME})
    # Resolving here turns an out-of-range option into a 422 at submit time, not a failed job.
    resolve_options(options, settings.engine)

    # Against the setting, so a query value is refused even where a form field overrides it.
    if "retention_seconds" in values:
        resolve_retention(values["retention_seconds"], settings.storage)
    # Never normalised: the raw field is the id (" alice" is not "alice").
    owner = check_owner(values["owner"]) if values.get("owner") else None
    return Submission(
        options=options,
        owner=owner,
        retention_seconds=values.get("retention_seconds"),
        webhook_url=values.get("webhook_url") or None,
    )
