"""Per-job options: one definition each, feeding the parser, the range checks and the OpenAPI schema.

Adding an option is one entry in ``ENGINE_OPTIONS``: ``JobOptions`` and
``ResolvedOptions`` are built from the table, ``parse_value`` reads its string form
(query string, multipart form field or raw-body query alike), ``check_value``
range-checks it, and ``json_schema`` documents exactly what the two accept.

The string grammar is strict and ASCII on purpose: ``int("+5")``, ``int(" 5 ")`` and
``int("٥")`` all work in Python, and a value one client path took and another refused
is what made query and form behave differently. Here an integer is ``-?[0-9]+``, a
number adds an optional fraction and exponent, a flag is ``true`` or ``false``, a
choice is one of its words; nothing is trimmed.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Literal

import msgspec

from lift3d.errors import InvalidOption, PipelineNotLoaded
from lift3d.settings import EngineSettings, PipelineName

Kind = Literal["integer", "number", "boolean", "string"]

_INTEGER = re.compile(r"-?[0-9]{1,24}")
_NUMBER = re.compile(r"-?(?:[0-9]{1,24}(?:\.[0-9]{0,24})?|\.[0-9]{1,24})(?:[eE][-+]?[0-9]{1,3})?")
_BOOLEANS = {"true": True, "false": False}


@dataclass(frozen=True)
class Option:
    """One client-settable option: its type, range or words, default and description."""

    name: str
    kind: Kind
    description: str
    minimum: float | None = None
    maximum: float | None = None
    # Values allowed besides the range (target_faces: 0 = keep every face).
    also: tuple[int, ...] = ()
    choices: tuple[str, ...] = ()
    max_length: int | None = None
    # A regular expression the whole string must match (also published in the schema, so keep it
    # to the syntax Python and ECMA-262 share).
    pattern: str | None = None
    # A fixed default, or where the server's default comes from (None: no default, "not set").
    default: Any = None
    server_default: Callable[[EngineSettings], Any] | None = None
    default_doc: str | None = None

    @property
    def code(self) -> str:
        return f"invalid_{self.name}"

    def _refuse(self, detail: str) -> InvalidOption:
        return InvalidOption(f"{self.name} {detail}", code=self.code)

    def parse_value(self, raw: str) -> Any:
        """The typed value of the option's string form, range-checked; ``InvalidOption`` otherwise."""
        if not isinstance(raw, str):
            raise self._refuse("must be a string in the form or query")
        if self.kind == "integer":
            if not _INTEGER.fullmatch(raw):
                raise self._refuse("must be an integer written in ASCII digits")
            value: Any = int(raw)
        elif self.kind == "number":
            if not _NUMBER.fullmatch(raw):
                raise self._refuse("must be a decimal number written in ASCII digits")
            value = float(raw)
        elif self.kind == "boolean":
            if raw not in _BOOLEANS:
                raise self._refuse("must be true or false")
            value = _BOOLEANS[raw]
        else:
            value = raw
        return self.check_value(value)

    def check_value(self, value: Any) -> Any:
        """Range, words and length; the same checks for parsed strings and for typed callers (CLI)."""
        if self.choices and value not in self.choices:
            raise self._refuse(f"must be one of {', '.join(self.choices)}")
        if self.kind in ("integer", "number") and value not in self.also:
            low, high = self.minimum, self.maximum
            if (low is not None and value < low) or (high is not None and value > high):
                extra = "".join(f", or {v}" for v in self.also)
                raise self._refuse(f"must be between {_num(low)} and {_num(high)}{extra}, got {value}")
        if self.max_length is not None and isinstance(value, str) and len(value) > self.max_length:
            raise self._refuse(f"must be at most {self.max_length} characters")
        if self.pattern is not None and isinstance(value, str) and not re.fullmatch(self.pattern, value):
            raise self._refuse("has characters it may not contain")
        return value

    def json_schema(self, *, maximum: float | None = None) -> dict[str, Any]:
        """The OpenAPI (JSON Schema) form of what ``parse_value`` accepts; ``maximum`` overrides a setting-bound one."""
        schema: dict[str, Any] = {"type": self.kind}
        high = maximum if maximum is not None else self.maximum
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if high is not None:
            schema["maximum"] = high
        if self.choices:
            schema["enum"] = list(self.choices)
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
        if self.pattern is not None:
            schema["pattern"] = f"^(?:{self.pattern})$"
        if self.also:
            schema = {"oneOf": [{"type": self.kind, "enum": list(self.also)}, schema]}
        if self.default is not None:
            schema["default"] = self.default
        schema["description"] = self.description + (f" Default: {self.default_doc}." if self.default_doc else "")
        return schema

    def python_type(self) -> Any:
        base: Any = {"integer": int, "number": float, "boolean": bool, "string": str}[self.kind]
        if self.choices:
            base = Literal[self.choices]  # type: ignore[valid-type]
        return base


def _num(value: float | None) -> str:
    return "any" if value is None else str(value)


# The engine's options. The ranges are hard limits; the defaults come from settings.
ENGINE_OPTIONS: tuple[Option, ...] = (
    Option(
        "seed", "integer", "Random seed; the same seed and options give the same model.",
        minimum=0, maximum=2**63 - 1,
        server_default=lambda _: secrets.randbelow(2**31), default_doc="random (reported back in the job)",
    ),
    Option(
        "steps", "integer", "Diffusion steps of the multi-view model.",
        minimum=1, maximum=200, server_default=lambda s: s.multiview.steps, default_doc="LIFT3D_STEPS (75)",
    ),
    Option(
        "guidance", "number", "Classifier-free guidance scale.",
        minimum=1.0, maximum=20.0, server_default=lambda s: s.multiview.guidance, default_doc="4.0",
    ),
    Option(
        "remove_background", "string", "Cut the subject out first: auto (when the photo has no alpha), on, off.",
        choices=("auto", "on", "off"), server_default=lambda s: s.background.default_mode, default_doc="auto",
    ),
    Option(
        "target_faces", "integer", "Faces of the finished mesh; 0 keeps every face.",
        minimum=500, maximum=2_000_000, also=(0,), server_default=lambda s: s.finish.target_faces, default_doc="50000",
    ),
    Option(
        "texture_size", "integer", "Texture edge in pixels.",
        minimum=512, maximum=2048, server_default=lambda s: s.finish.texture_size, default_doc="1024",
    ),
    Option(
        "texture", "string", "uv: a texture image; vertex: colours per vertex.",
        choices=("uv", "vertex"), server_default=lambda s: s.finish.texture, default_doc="uv",
    ),
    Option("return_views", "boolean", "Also keep the six generated views as views.png.", default=False),
    # Resolved together below: which pipelines and models exist depends on the loaded profile.
    Option(
        "pipeline", "string", "multiview (Zero123++ + InstantMesh) or fast (TripoSR); it must be loaded (/v1/info).",
        choices=("multiview", "fast"), default_doc="multiview where loaded, else the profile's first",
    ),
    Option(
        "reconstruct_model", "string", "The multiview pipeline's reconstruction model, one the server loaded (/v1/info).",
        max_length=100, default_doc="LIFT3D_RECONSTRUCT_MODEL",
    ),
)
# Options whose default and check depend on other options (``_resolve_pipeline``).
_CROSS_FIELD = {"pipeline", "reconstruct_model"}
OPTIONS_BY_NAME = {option.name: option for option in ENGINE_OPTIONS}

# What the client asked for; ``None`` means "the server's default".
JobOptions = msgspec.defstruct(
    "JobOptions",
    [
        (o.name, o.python_type() if o.default is not None else o.python_type() | None, o.default)  # type: ignore[operator]
        for o in ENGINE_OPTIONS
    ],
    module=__name__,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
)
# Every option made concrete; recorded in the job result.
ResolvedOptions = msgspec.defstruct(
    "ResolvedOptions", [(o.name, o.python_type()) for o in ENGINE_OPTIONS], module=__name__, frozen=True, kw_only=True
)


def default_pipeline(settings: EngineSettings) -> PipelineName:
    loaded = settings.pipelines
    return "multiview" if "multiview" in loaded else loaded[0]


def _resolve_pipeline(options: Any, settings: EngineSettings) -> tuple[str, str]:
    pipeline = options.pipeline or default_pipeline(settings)
    OPTIONS_BY_NAME["pipeline"].check_value(pipeline)
    if pipeline not in settings.pipelines:
        raise PipelineNotLoaded(pipeline, settings.pipelines)
    if pipeline != "multiview":
        # The fast pipeline has one reconstruction model (TripoSR): reconstruct_model names InstantMesh's.
        if options.reconstruct_model:
            raise InvalidOption(
                "reconstruct_model chooses the multiview pipeline's model; the fast pipeline has only TripoSR",
                code="invalid_reconstruct_model",
            )
        return pipeline, ""
    loaded = settings.reconstruct.loaded_models
    chosen = options.reconstruct_model or settings.reconstruct.model
    if chosen not in loaded:
        raise InvalidOption(
            f"reconstruct_model must be one of the loaded models {', '.join(loaded)}; got {chosen!r}",
            code="invalid_reconstruct_model",
        )
    return pipeline, chosen


def resolve_options(options: Any, settings: EngineSettings) -> Any:
    """The server's defaults filled in and every value checked (the HTTP edge and the CLI alike)."""
    values: dict[str, Any] = {}
    values["pipeline"], values["reconstruct_model"] = _resolve_pipeline(options, settings)
    for option in ENGINE_OPTIONS:
        if option.name in _CROSS_FIELD:
            continue
        value = getattr(options, option.name)
        if value is None:
            value = option.server_default(settings) if option.server_default else option.default
        if option.kind == "number":
            value = float(value)
        values[option.name] = option.check_value(value)
    return ResolvedOptions(**values)
