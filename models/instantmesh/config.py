"""Configuration of the InstantMesh reconstruction models (NeRF and mesh variants).

One schema serves the shipped presets (``configs/*.json`` in this package) and the
golden sets' ``config.json``: upstream's yaml layout (``model_config.params``,
``infer_config``) plus the ViT configuration that upstream fetches from the Hub
(``vit_config``) and the DINO processor's normalisation (``vit_preprocessor_config``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from models.vit import ViTConfig

PRESETS_DIR = Path(__file__).with_name("configs")
PresetName = Literal[
    "instant-nerf-base", "instant-nerf-large", "instant-mesh-base", "instant-mesh-large", "tiny", "tiny-mesh"
]
Variant = Literal["nerf", "mesh"]
# The tiny preset of each variant (weights mode ``tiny`` builds it instead of the full size).
TINY_PRESETS: dict[str, str] = {"nerf": "tiny", "mesh": "tiny-mesh"}


def variant_of(preset: str) -> Variant:
    """``instant-mesh-*`` presets are the FlexiCubes variant, everything else the NeRF one."""
    return "mesh" if preset.startswith("instant-mesh") or preset == "tiny-mesh" else "nerf"


@dataclass(frozen=True)
class LRMConfig:
    name: str
    vit: ViTConfig
    transformer_dim: int
    transformer_layers: int
    transformer_heads: int
    triplane_low_res: int
    triplane_high_res: int
    triplane_dim: int
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    mesh_resolution: int = 256
    mesh_threshold: float = 10.0
    seed: int = 0
    variant: Variant = "nerf"
    # Mesh variant only: the FlexiCubes grid (cubes per axis, world extent of the box).
    grid_res: int = 128
    grid_scale: float = 2.1

    @property
    def camera_dim(self) -> int:
        return 16

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, name: str | None = None) -> "LRMConfig":
        params = data["model_config"]["params"]
        vit = ViTConfig.from_hf_dict(data["vit_config"])
        # The triplane transformer's cross-attention width is encoder_feat_dim; the ViT produces hidden_size.
        if int(params["encoder_feat_dim"]) != vit.hidden_size:
            raise ValueError(
                f"encoder_feat_dim {params['encoder_feat_dim']} must equal the ViT hidden size {vit.hidden_size}"
            )
        processor = data.get("vit_preprocessor_config", {})
        # The reference's class names the variant; lrm_mesh.InstantMesh is the FlexiCubes one.
        target = str(data["model_config"].get("target", ""))
        variant: Variant = "mesh" if ("lrm_mesh" in target or "grid_res" in params) else "nerf"
        infer = data.get("infer_config", {})
        return cls(
            name=name or str(data.get("name", "instant-nerf")),
            vit=vit,
            transformer_dim=int(params["transformer_dim"]),
            transformer_layers=int(params["transformer_layers"]),
            transformer_heads=int(params["transformer_heads"]),
            triplane_low_res=int(params["triplane_low_res"]),
            triplane_high_res=int(params["triplane_high_res"]),
            triplane_dim=int(params["triplane_dim"]),
            image_mean=tuple(float(v) for v in processor.get("image_mean", (0.5, 0.5, 0.5))),
            image_std=tuple(float(v) for v in processor.get("image_std", (0.5, 0.5, 0.5))),
            mesh_resolution=int(infer.get("mesh_resolution", 256)),
            mesh_threshold=float(infer.get("mesh_threshold", 10.0)),
            seed=int(data.get("seed", 0)),
            variant=variant,
            grid_res=int(params.get("grid_res", 128)),
            grid_scale=float(params.get("grid_scale", 2.1)),
        )

    @classmethod
    def from_json(cls, path: Path) -> "LRMConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def preset(cls, name: PresetName) -> "LRMConfig":
        path = PRESETS_DIR / f"{name}.json"
        if not path.is_file():
            raise KeyError(f"unknown InstantMesh preset {name!r}")
        return cls.from_json(path)
