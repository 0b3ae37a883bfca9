"""The sampler Zero123++ v1.2 is used with: Euler ancestral, v-prediction, trailing spacing."""

from __future__ import annotations

from typing import Any

from diffusers import EulerAncestralDiscreteScheduler


def build_scheduler(config: dict[str, Any]) -> EulerAncestralDiscreteScheduler:
    """A fresh scheduler per call (it keeps a step index), from the folder's scheduler config.

    The v1.2 repo's config says "linspace"; the official README and InstantMesh both
    override it with "trailing", which is what the model is used with.
    """
    if config.get("prediction_type") != "v_prediction":
        raise ValueError(f"Zero123++ v1.2 predicts v, the scheduler config says {config.get('prediction_type')!r}")
    return EulerAncestralDiscreteScheduler.from_config(config, timestep_spacing="trailing")
