"""Configuration of TripoSR.

One schema serves the shipped presets (``configs/*.json`` in this package) and the
golden sets' ``config.json``: ``tsr`` is the system configuration in upstream's own
layout (the keys of the real ``config.yaml``), ``vit`` the Hugging Face ViT
``config.json`` that upstream fetches from the Hub by the name in
``tsr.image_tokenizer``. ``mesh`` (optional) holds the marching-cubes defaults.

Options upstream offers but the released model does not use (``mean`` feature
reduction, other feed-forward activations, ...) are refused by name rather than
silently built differently.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from models.vit import ViTConfig

PRESETS_DIR = Path(__file__).with_name("configs")
PresetName = Literal["triposr", "tiny"]

DensityActivation = Literal["exp", "softplus", "none"]
DEFAULT_MESH_RESOLUTION = 256
DEFAULT_MESH_THRESHOLD = 25.0

# Upstream's defaults for the options below; any other value is an architecture we do not build.
_FIXED_BACKBONE = {
    "dropout": 0.0,
    "activation_fn": "geglu",
    "only_cross_attention": False,
    "double_self_attention": False,
    "upcast_attention": False,
    "norm_type": "layer_norm",
    "norm_elementwise_affine": True,
    "out_channels": None,
}
_FIXED_RENDERER = {"feature_reduction": "concat", "color_activation": "sigmoid"}
_FIXED_DECODER = {"bias": True}
# Options read below, plus switches that only matter for training or initialisation.
_KNOWN_BACKBONE = {
    "in_channels", "num_attention_heads", "attention_head_dim", "num_layers", "cross_attention_dim",
    "norm_num_groups", "attention_bias", "gradient_checkpointing",
}
_KNOWN_RENDERER = {"radius", "density_activation", "density_bias", "num_samples_per_ray", "randomized"}
_KNOWN_DECODER = {"in_channels", "n_neurons", "n_hidden_layers", "activation", "weight_init", "bias_init"}


@dataclass(frozen=True)
class TripoSRConfig:
    name: str
    vit: ViTConfig
    cond_image_size: int
    plane_size: int
    token_channels: int  # tokenizer.num_channels = backbone.in_channels
    heads: int
    head_dim: int
    layers: int
    cross_attention_dim: int
    norm_num_groups: int
    attention_bias: bool
    triplane_channels: int  # post_processor.out_channels
    decoder_in_channels: int
    decoder_neurons: int
    decoder_hidden_layers: int
    decoder_activation: Literal["silu", "relu"]
    radius: float
    density_activation: DensityActivation
    density_bias: float
    samples_per_ray: int
    mesh_resolution: int = DEFAULT_MESH_RESOLUTION
    mesh_threshold: float = DEFAULT_MESH_THRESHOLD
    seed: int = 0

    @property
    def inner_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def triplane_size(self) -> int:
        """Side of each scene-code plane: the upsampler doubles the token grid."""
        return 2 * self.plane_size

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, name: str | None = None) -> "TripoSRConfig":
        tsr, vit = data["tsr"], ViTConfig.from_hf_dict(data["vit"])
        tokenizer, backbone = tsr["tokenizer"], tsr["backbone"]
        post, decoder, renderer = tsr["post_processor"], tsr["decoder"], tsr["renderer"]
        _refuse_unsupported("backbone", backbone, _FIXED_BACKBONE, _KNOWN_BACKBONE)
        _refuse_unsupported("renderer", renderer, _FIXED_RENDERER, _KNOWN_RENDERER)
        _refuse_unsupported("decoder", decoder, _FIXED_DECODER, _KNOWN_DECODER)
        channels = int(tokenizer["num_channels"])
        for where, value in (
            ("backbone.in_channels", backbone["in_channels"]),
            ("post_processor.in_channels", post["in_channels"]),
        ):
            if int(value) != channels:
                raise ValueError(f"{where} {value} must equal tokenizer.num_channels {channels}")
        if int(backbone["cross_attention_dim"]) != vit.hidden_size:
            raise ValueError(
                f"backbone.cross_attention_dim {backbone['cross_attention_dim']} "
                f"must equal the ViT hidden size {vit.hidden_size}"
            )
        out_channels = int(post["out_channels"])
        if int(decoder["in_channels"]) != 3 * out_channels:
            raise ValueError(
                f"decoder.in_channels {decoder['in_channels']} must be 3 x post_processor.out_channels ({out_channels})"
            )
        if int(tsr["cond_image_size"]) % vit.patch_size:
            raise ValueError(
                f"cond_image_size {tsr['cond_image_size']} is not a multiple of the patch size {vit.patch_size}"
            )
        activation = str(decoder.get("activation", "relu"))
        if activation not in ("silu", "relu"):
            raise ValueError(f"decoder.activation {activation!r} is not implemented")
        density_activation = str(renderer.get("density_activation", "trunc_exp")).lower()
        if density_activation not in ("exp", "softplus", "none"):
            # upstream resolves names through its get_activation(); 'trunc_exp' does not resolve there either
            raise ValueError(f"renderer.density_activation {density_activation!r} is not implemented")
        mesh = data.get("mesh", {})
        return cls(
            name=name or str(data.get("name", "triposr")),
            vit=vit,
            cond_image_size=int(tsr["cond_image_size"]),
            plane_size=int(tokenizer["plane_size"]),
            token_channels=channels,
            heads=int(backbone.get("num_attention_heads", 16)),
            head_dim=int(backbone.get("attention_head_dim", 88)),
            layers=int(backbone.get("num_layers", 1)),
            cross_attention_dim=int(backbone["cross_attention_dim"]),
            norm_num_groups=int(backbone.get("norm_num_groups", 32)),
            attention_bias=bool(backbone.get("attention_bias", False)),
            triplane_channels=out_channels,
            decoder_in_channels=int(decoder["in_channels"]),
            decoder_neurons=int(decoder["n_neurons"]),
            decoder_hidden_layers=int(decoder["n_hidden_layers"]),
            decoder_activation=activation,  # type: ignore[arg-type]
            radius=float(renderer["radius"]),
            density_activation=density_activation,  # type: ignore[arg-type]
            density_bias=float(renderer.get("density_bias", -1.0)),
            samples_per_ray=int(renderer.get("num_samples_per_ray", 128)),
            mesh_resolution=int(mesh.get("resolution", DEFAULT_MESH_RESOLUTION)),
            mesh_threshold=float(mesh.get("threshold", DEFAULT_MESH_THRESHOLD)),
            seed=int(data.get("seed", 0)),
        )

    @classmethod
    def from_json(cls, path: Path) -> "TripoSRConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def preset(cls, name: PresetName) -> "TripoSRConfig":
        path = PRESETS_DIR / f"{name}.json"
        if not path.is_file():
            raise KeyError(f"unknown TripoSR preset {name!r}")
        return cls.from_json(path)

    @classmethod
    def from_upstream_yaml(cls, text: str, vit: Mapping[str, Any], *, name: str = "triposr") -> "TripoSRConfig":
        """Upstream's ``config.yaml`` (OmegaConf ``${a.b}`` references resolved) with a ViT config."""
        import yaml  # PyYAML comes with transformers and huggingface_hub

        tsr = yaml.safe_load(text)
        if not isinstance(tsr, dict):
            raise ValueError("config.yaml does not hold a mapping")
        return cls.from_dict({"tsr": resolve_references(tsr), "vit": dict(vit)}, name=name)


def _refuse_unsupported(section: str, values: Mapping[str, Any], fixed: Mapping[str, Any], known: set[str]) -> None:
    for key, expected in fixed.items():
        if key in values and values[key] != expected:
            raise ValueError(f"{section}.{key} = {values[key]!r} is not implemented (only {expected!r})")
    unknown = sorted(set(values) - set(fixed) - known)
    if unknown:
        raise ValueError(f"{section} has options this implementation does not know: {unknown}")


_REFERENCE = re.compile(r"^\$\{([A-Za-z0-9_.]+)\}$")


def resolve_references(tree: dict[str, Any]) -> dict[str, Any]:
    """Replace whole-value ``${a.b}`` references (OmegaConf interpolation) by the value they name."""

    def lookup(path: str) -> Any:
        node: Any = tree
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"config reference ${{{path}}} names nothing")
            node = node[part]
        return node

    def resolve(node: Any, depth: int) -> Any:
        if depth > 8:
            raise ValueError("config references nest too deeply (a cycle?)")
        if isinstance(node, dict):
            return {key: resolve(value, depth) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value, depth) for value in node]
        if isinstance(node, str) and (match := _REFERENCE.match(node)):
            return resolve(lookup(match.group(1)), depth + 1)
        return node

    return resolve(tree, 0)
