"""Benchmark configurations: named presets and the ``NAME[:key=value,...]`` command-line form.

A configuration is what one column of the comparison varies: the compute dtype, the
diffusion steps, and any other engine setting (dotted, relative to ``engine``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, get_args

from lift3d.settings import DtypeChoice

DTYPE_CHOICES = get_args(DtypeChoice)


@dataclass(frozen=True)
class BenchConfig:
    name: str
    dtype: str
    steps: int
    # Extra engine settings, dotted below ``engine`` (e.g. {"reconstruct.grid_resolution": 128}).
    settings: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    description: str = ""
    # What the command line changed from the preset; a changed baseline no longer mirrors upstream.
    changes: dict[str, Any] = field(default_factory=dict)

    def engine_overrides(self) -> dict[str, Any]:
        return {"engine.dtype": self.dtype, **{f"engine.{key}": value for key, value in self.settings.items()}}

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "preset": self.preset,
            "description": self.description,
            "dtype": self.dtype,
            "steps": self.steps,
            "settings": dict(self.settings),
            "changes_from_preset": dict(self.changes) if self.preset else None,
        }


# The upstream pipelines (Zero123++ v1.2 / InstantMesh run scripts) load the UNet in fp16,
# run eagerly with no torch.compile, and sample 75 steps: that is what users compare against.
PRESETS: dict[str, BenchConfig] = {
    "baseline": BenchConfig(
        "baseline", "float16", 75, preset="baseline", description="upstream defaults: fp16, eager, 75 steps, no compile"
    ),
    "fp16-28": BenchConfig("fp16-28", "float16", 28, preset="fp16-28", description="fp16, 28 steps"),
    "bf16-75": BenchConfig("bf16-75", "bfloat16", 75, preset="bf16-75", description="bf16, 75 steps"),
    "bf16-28": BenchConfig("bf16-28", "bfloat16", 28, preset="bf16-28", description="bf16, 28 steps"),
    "fp32-75": BenchConfig("fp32-75", "float32", 75, preset="fp32-75", description="fp32, 75 steps"),
    # The fast pipeline (TripoSR; no diffusion, so steps do not apply): float32, as the reference runs it.
    "triposr": BenchConfig(
        "triposr", "float32", 1, settings={"profile": "fast"}, preset="triposr",
        description="the fast pipeline: TripoSR in float32, marching cubes at 256 (tiny: 32), shared finishing",
    ),
}
DEFAULT_CONFIGS = ("baseline", "fp16-28", "bf16-75", "bf16-28")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_config(spec: str, default_steps: int) -> BenchConfig:
    """``bf16-28`` (a preset), ``baseline:steps=2,dtype=float32`` (a preset changed, and
    marked so), or ``mine:dtype=bfloat16,steps=40,reconstruct.grid_resolution=128``."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"configuration {spec!r} has no name")
    config = PRESETS.get(name) or BenchConfig(name, "auto", default_steps, description="custom")
    overrides: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"configuration {spec!r}: expected key=value, got {item!r}")
        overrides[key.strip()] = _parse_value(value.strip())
    if not overrides:
        return config
    changes = dict(overrides)
    changed = ", ".join(f"{key}={value}" for key, value in changes.items())
    dtype = str(overrides.pop("dtype", config.dtype))
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"configuration {spec!r}: dtype must be one of {', '.join(DTYPE_CHOICES)}")
    steps = int(overrides.pop("steps", config.steps))
    description = f"{config.description} (changed: {changed})" if config.preset else "custom"
    return replace(
        config, dtype=dtype, steps=steps, settings={**config.settings, **overrides},
        description=description, changes=changes,
    )
