"""The Zero123++ v1.2 components, and the three ways to get them.

* ``load_components(folder)``: a folder laid out like the Hugging Face repo
  ``sudo-ai/zero123plus-v1.2`` (real weights, or a golden set's ``config/``), loaded
  offline component by component and cast to the requested dtype.
* ``build_random_components(config_dir)``: the architecture from a config folder with
  random weights; the project ships ``configs/full`` (the real v1.2 hyper-parameters,
  for ``dummy`` mode) and ``configs/tiny`` (our own small model, for ``tiny`` mode).
* ``swap_unet_weights``: InstantMesh's white-background UNet, a plain diffusers UNet
  state dict loaded strictly over the v1.2 UNet.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import (
    CLIPImageProcessorPil,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from lift3d.errors import WeightsCorrupt, WeightsMissing
from lift3d.weights.catalog import ZERO123PLUS_DIR, pull_hint

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
FULL_CONFIG_DIR = CONFIGS_DIR / "full"
TINY_CONFIG_DIR = CONFIGS_DIR / "tiny"
# The real repo has no tokenizer among our configs (1.6 MB of vocabulary); random-weight
# full-size builds use the tiny byte-level CLIP tokenizer, whose ids fit any CLIP vocabulary.
RANDOM_TOKENIZER_DIR = TINY_CONFIG_DIR / "tokenizer"

ModelT = TypeVar("ModelT", UNet2DConditionModel, AutoencoderKL)



@dataclass
class Zero123PlusComponents:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    vision_encoder: CLIPVisionModelWithProjection
    tokenizer: CLIPTokenizer
    # The PIL backend explicitly: the reference's processor, with or without torchvision installed.
    feature_extractor_clip: CLIPImageProcessorPil
    feature_extractor_vae: CLIPImageProcessorPil
    scheduler_config: dict[str, Any]
    ramping_coefficients: list[float]

    def models(self) -> dict[str, torch.nn.Module]:
        return {
            "unet": self.unet,
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "vision_encoder": self.vision_encoder,
        }

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Zero123PlusComponents":
        for model in self.models().values():
            if dtype is not None and model.dtype != dtype:
                model.to(dtype=dtype)
            model.to(device=device).eval().requires_grad_(False)
        return self


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WeightsMissing(f"{path} is missing; {pull_hint([ZERO123PLUS_DIR])}")
    return json.loads(path.read_text())


def _light_components(folder: Path, tokenizer_dir: Path) -> dict[str, Any]:
    """Tokenizer, image processors, scheduler config and ramping coefficients of a folder."""
    index = _read_json(folder / "model_index.json")
    ramping = index.get("ramping_coefficients")
    if not ramping:
        raise WeightsCorrupt(f"{folder / 'model_index.json'} has no ramping_coefficients")
    return {
        "tokenizer": CLIPTokenizer.from_pretrained(tokenizer_dir),
        "feature_extractor_clip": CLIPImageProcessorPil.from_pretrained(folder / "feature_extractor_clip"),
        "feature_extractor_vae": CLIPImageProcessorPil.from_pretrained(folder / "feature_extractor_vae"),
        "scheduler_config": _read_json(folder / "scheduler" / "scheduler_config.json"),
        "ramping_coefficients": [float(value) for value in ramping],
    }


def load_components(
    folder: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Zero123PlusComponents:
    """Load a diffusers-layout Zero123++ folder offline; weights are upcast/cast to ``dtype``."""
    folder = Path(folder)
    for subfolder in ("unet", "vae", "text_encoder", "vision_encoder", "tokenizer"):
        if not (folder / subfolder).is_dir():
            raise WeightsMissing(f"{folder / subfolder} is missing; {pull_hint([ZERO123PLUS_DIR])}")
    offline = {"local_files_only": True}
    try:
        unet = _load_diffusers_model(UNet2DConditionModel, folder / "unet", device, dtype)
        vae = _load_diffusers_model(AutoencoderKL, folder / "vae", device, dtype)
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype, **offline)
        vision_encoder = CLIPVisionModelWithProjection.from_pretrained(
            folder, subfolder="vision_encoder", dtype=dtype, **offline
        )
    except OSError as error:
        raise WeightsMissing(f"cannot load Zero123++ weights from {folder}: {error}; {pull_hint([ZERO123PLUS_DIR])}") from error
    components = Zero123PlusComponents(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        vision_encoder=vision_encoder,
        **_light_components(folder, folder / "tokenizer"),
    )
    return components.to(device)


def _load_diffusers_model(cls: type[ModelT], folder: Path, device: torch.device | str, dtype: torch.dtype) -> ModelT:
    """Build on the meta device and assign the file's tensors strictly: no throw-away random init.

    Falls back to diffusers' own loader for files it must convert (legacy key names) or
    models with buffers outside the state dict.
    """
    weights = folder / "diffusion_pytorch_model.safetensors"
    if weights.is_file():
        with torch.device("meta"):
            model = cls.from_config(cls.load_config(folder))
        state_dict = {key: value.to(dtype) for key, value in load_file(weights, device=str(device)).items()}
        expected = model.state_dict()
        if set(state_dict) == set(expected) and all(state_dict[k].shape == expected[k].shape for k in expected):
            model.load_state_dict(state_dict, strict=True, assign=True)
            if not any(tensor.is_meta for tensor in (*model.parameters(), *model.buffers())):
                return model.eval()
    # accelerate is not a dependency: diffusers initialises randomly, then overwrites.
    return cls.from_pretrained(folder, torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=False)


def build_random_components(
    config_dir: Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int | None = 0,
) -> Zero123PlusComponents:
    """The architecture of ``config_dir`` with random weights, built directly on ``device``.

    ``seed`` given: every parameter is drawn from one dedicated CPU generator (reproducible,
    the process RNG untouched); meant for small models. ``seed=None``: the libraries'
    own initialisation on ``device`` (fast for the full-size model; on the meta device
    nothing is allocated at all).
    """
    config_dir = Path(config_dir)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(_read_json(config_dir / "unet" / "config.json"))
        vae = AutoencoderKL.from_config(_read_json(config_dir / "vae" / "config.json"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**_read_json(config_dir / "text_encoder" / "config.json")))
        vision_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(**_read_json(config_dir / "vision_encoder" / "config.json"))
        )
    tokenizer_dir = config_dir / "tokenizer" if (config_dir / "tokenizer").is_dir() else RANDOM_TOKENIZER_DIR
    components = Zero123PlusComponents(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        vision_encoder=vision_encoder,
        **_light_components(config_dir, tokenizer_dir),
    )
    if seed is not None:
        generator = torch.Generator("cpu").manual_seed(seed)
        for name, model in components.models().items():
            seeded_init(model, generator, small_output=name == "vae")
    if torch.device(device).type == "meta":
        return components
    return components.to(device, dtype)


@torch.no_grad()
def seeded_init(model: torch.nn.Module, generator: torch.Generator, *, small_output: bool = False) -> None:
    """Overwrite every parameter from ``generator``, in sorted-name order.

    Matrices and kernels N(0,1)/sqrt(fan_in), norm weights 1 + 0.2·N, other vectors
    0.1·N: activations stay O(1) through any depth. ``small_output`` scales the VAE
    decoder's last conv by 0.25 so decoded images stay mostly inside [-1, 1].
    """
    for name, parameter in sorted(model.named_parameters()):
        noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
        if parameter.ndim >= 2:
            value = noise / math.sqrt(parameter[0].numel())
        elif "norm" in name and name.endswith("weight"):
            value = 1.0 + 0.2 * noise
        else:
            value = 0.1 * noise
        if small_output and name.startswith("decoder.conv_out."):
            value = value * 0.25
        parameter.copy_(value.to(device=parameter.device, dtype=parameter.dtype))


def swap_unet_weights(unet: UNet2DConditionModel, state_dict_path: Path) -> None:
    """Load a plain diffusers UNet state dict (e.g. InstantMesh's white-background UNet) strictly."""
    state_dict_path = Path(state_dict_path)
    if not state_dict_path.is_file():
        raise WeightsMissing(f"{state_dict_path} is missing; {pull_hint([ZERO123PLUS_DIR])}")
    state_dict = load_file(state_dict_path)
    try:
        unet.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise WeightsCorrupt(f"{state_dict_path} does not fit the Zero123++ UNet: {error}") from error
