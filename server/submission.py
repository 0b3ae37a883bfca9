"""Turning the form fields / query parameters of ``POST /v1/jobs`` into typed options.

Engine options are range-checked by the engine's own ``resolve_options`` (so the
HTTP edge and the CLI refuse exactly the same values); retention and webhook
targets are checked once, by :meth:`server.storage.Storage.new_job`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import msgspec

from lift3d.settings import Settings
from lift3d.errors import InvalidOption
from pipeline.options import JobOptions, resolve_options
from server.owners import check_owner
from server.storage import NewJob, request_hash


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(value)


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in allowed:
            raise ValueError(value)
        return value

    return parse


# Engine options (JobOptions fields) and their parsers.
ENGINE_FIELDS: dict[str, Callable[[str], Any]] = {
    "seed": int,
    "steps": int,
    "guidance": float,
    "remove_background": _choice("auto", "on", "off"),
    "target_faces": int,
    "texture_size": int,
    "texture": _choice("uv", "vertex"),
    "return_views": _parse_bool,
    "pipeline": _choice("multiview", "fast"),
    "reconstruct_model": str,  # checked against the loaded models by resolve_options
}
# Options about the job's data, handled by the server.
JOB_FIELDS: dict[str, Callable[[str], Any]] = {
    "owner": str,
    "retention_seconds": int,
    "webhook_url": str,
}


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
    """Typed options from strings; every problem is an ``InvalidOption`` (422) with a specific code."""
    values: dict[str, Any] = {}
    for name, raw in fields.items():
        parse = ENGINE_FIELDS.get(name) or JOB_FIELDS.get(name)
        if parse is None:
            raise InvalidOption(f"unknown option {name!r}", code="unknown_option")
        try:
            values[name] = parse(raw.strip())
        except ValueError:
            raise InvalidOption(f"option {name!r} has an invalid value", code=f"invalid_{name}") from None

    options = JobOptions(**{k: v for k, v in values.items() if k in ENGINE_FIELDS})
    # Resolving here turns an out-of-range option into a 422 at submit time, not a failed job.
    resolve_options(options, settings.engine)

    # The raw field, not the stripped value: " alice" is not "alice" (owner ids are never normalised).
    owner = check_owner(fields["owner"]) if fields.get("owner") else None
    return Submission(
        options=options,
        owner=owner,
        retention_seconds=values.get("retention_seconds"),
        webhook_url=values.get("webhook_url") or None,
    )
