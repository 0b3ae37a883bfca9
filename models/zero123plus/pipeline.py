"""Zero123++ v1.2: one condition image in, a 3x2 grid of six novel views out.

Our own pipeline on diffusers/transformers components (no remote code). It
computes what the reference pipelines compute (SUDO-AI-3D/zero123plus and
InstantMesh's white-background copy); ``models/zero123plus/golden.py`` proves it
against recorded reference runs.

Randomness comes from two streams, each an explicit ``torch.Generator``:

* ``reference_generator`` — the reference's *global* RNG draws: the two VAE
  posterior samples and, per step, the noise added to the condition latent;
* ``generator`` — the initial latents and, per step, the ancestral noise.

Draws are interleaved exactly as in the reference. Given only one of the two,
that generator feeds both streams: the reference's behaviour when it gets no
generator and everything comes from the seeded process RNG (InstantMesh's run.py). Every draw is float32 on the
CPU and then moved to the model's device, so a seed gives the same noise on any
device and dtype. The process-global RNG is never used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from PIL import Image

from models.zero123plus.attention import ReferenceBank, install_reference_attention
from models.zero123plus.components import Zero123PlusComponents
from models.zero123plus.preprocess import BACKGROUNDS, composite_on_background, preprocess
from models.zero123plus.scheduler import build_scheduler
from models.zero123plus.views import split_grid

# The v1.2 latent space: z = (z_vae * scaling_factor - LATENT_SHIFT) * LATENT_SCALE.
LATENT_SHIFT = 0.22
LATENT_SCALE = 0.75
# Decoded images are scaled by 0.8/0.5 (the condition branch normalises with std 0.8).
IMAGE_SCALE_NUM = 0.8
IMAGE_SCALE_DEN = 0.5

# diffusers' callback_on_step_end: (pipeline, step_index, timestep, tensors) -> tensors to replace
StepCallback = Callable[["Zero123PlusPipeline", int, float, dict[str, torch.Tensor]], dict[str, torch.Tensor] | None]


class Probe(Protocol):
    """Receives named intermediates (golden checks, debugging); ``None`` costs nothing."""

    def record(self, name: str, value: torch.Tensor | np.ndarray) -> None: ...


@dataclass
class MultiviewOutput:
    decoded: torch.Tensor  # [1, 3, H, W] float32 CPU, the VAE output x1.6, about [-1, 1], unclamped
    images: torch.Tensor  # [3, H, W] float32 CPU in [0, 1]
    grid: Image.Image  # RGB H x W, 3 rows x 2 columns, the reference's uint8 rounding
    views: torch.Tensor  # [6, 3, H/3, W/2] float32 CPU in [0, 1], row-major
    num_inference_steps: int
    guidance_scale: float


@dataclass(frozen=True)
class NoiseStreams:
    reference: torch.Generator  # the reference's global-RNG draws
    latent: torch.Generator  # the reference's `generator` draws

    @classmethod
    def of(cls, generator: torch.Generator | None, reference_generator: torch.Generator | None) -> "NoiseStreams":
        if generator is None and reference_generator is None:
            generator = torch.Generator("cpu")
            generator.seed()  # unseeded: fresh entropy, the process RNG untouched
        # One generator given: it feeds both streams, interleaved (the reference without a generator).
        reference = reference_generator if reference_generator is not None else generator
        return cls(reference=reference, latent=generator if generator is not None else reference)


def _randn(shape: tuple[int, ...] | torch.Size, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device)


class Zero123PlusPipeline:
    def __init__(self, components: Zero123PlusComponents, *, background_rgb: tuple[int, int, int] | None = None):
        self.components = components
        self.background_rgb = tuple(background_rgb or BACKGROUNDS["instantmesh"])
        install_reference_attention(components.unet)
        self.vae_scale_factor = 2 ** (len(components.vae.config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        return self.components.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.components.unet.dtype

    # -- conditioning -------------------------------------------------------------------

    def _encode_condition_latents(
        self, pixel_values: torch.Tensor, with_negative: bool, noise_source: torch.Generator, probe: Probe | None
    ) -> torch.Tensor:
        """Raw VAE posterior samples [negative (zero image), image]; no scaling factor."""
        vae = self.components.vae

        def sample(pixels: torch.Tensor, tag: str) -> torch.Tensor:
            posterior = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
            mean, std = posterior.mean.float(), posterior.std.float()
            noise = _randn(mean.shape, noise_source, self.device)
            if probe:
                probe.record(f"vae.{tag}_mean", mean)
                probe.record(f"vae.{tag}_std", std)
                probe.record(f"noise.vae_{tag}", noise)
            return mean + std * noise

        latents = [sample(pixel_values, "cond")]
        if with_negative:
            # Zero in normalised space, i.e. a mid-gray image: the unconditional reference.
            latents.insert(0, sample(torch.zeros_like(pixel_values), "uncond"))
        return torch.cat(latents)

    def _encode_prompt(self, prompt: str, probe: Probe | None) -> torch.Tensor:
        tokenizer, text_encoder = self.components.tokenizer, self.components.text_encoder
        input_ids = tokenizer(
            prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        # Causal mask only, as Stable Diffusion 2 was trained: no padding mask.
        embeds = text_encoder(input_ids.to(self.device)).last_hidden_state.float()
        if probe:
            probe.record("text.input_ids", input_ids)
            probe.record("text.embeds", embeds)
        return embeds

    def _encoder_hidden_states(
        self, image: Image.Image, prompt: str, with_negative: bool, probe: Probe | None
    ) -> torch.Tensor:
        """[uncond, cond] text states; the cond row carries the CLIP image embedding, ramped per token."""
        clip_pixels = preprocess(image, self.components.feature_extractor_clip)
        if probe:
            probe.record("pre.clip_input_uint8", clip_pixels.crop_uint8)
        vision = self.components.vision_encoder
        image_embeds = vision(clip_pixels.pixel_values.to(self.device, vision.dtype)).image_embeds.float()
        text_embeds = self._encode_prompt(prompt, probe)
        ramp = torch.tensor(self.components.ramping_coefficients, dtype=torch.float32, device=self.device)
        if ramp.numel() != text_embeds.shape[1]:
            raise ValueError(f"{ramp.numel()} ramping coefficients for {text_embeds.shape[1]} text tokens")
        ramped = image_embeds[:, None, :] * ramp[None, :, None]
        prompt_embeds = text_embeds + ramped
        states = torch.cat([text_embeds, prompt_embeds]) if with_negative else prompt_embeds
        if probe:
            probe.record("image_embeds", image_embeds)
            probe.record("global_embeds_ramped", ramped)
            probe.record("prompt_embeds", prompt_embeds)
            probe.record("encoder_hidden_states", states)
        return states

    # -- denoising --------------------------------------------------------------------

    def _unet(self, sample: torch.Tensor, t: torch.Tensor, states: torch.Tensor, bank: ReferenceBank) -> torch.Tensor:
        unet = self.components.unet
        out = unet(
            sample.to(unet.dtype),
            t,
            encoder_hidden_states=states.to(unet.dtype),
            cross_attention_kwargs={"reference": bank},
            return_dict=False,
        )[0]
        return out.float()

    def _initial_latents(
        self, scheduler, height: int, width: int, generator: torch.Generator, probe: Probe | None
    ) -> torch.Tensor:
        factor = self.vae_scale_factor
        shape = (1, self.components.unet.config.in_channels, height // factor, width // factor)
        noise = _randn(shape, generator, self.device)
        latents = noise * scheduler.init_noise_sigma
        if probe:
            probe.record("sched.timesteps", scheduler.timesteps.cpu())
            probe.record("sched.sigmas", scheduler.sigmas.float().cpu())
            probe.record("sched.init_noise_sigma", torch.tensor([float(scheduler.init_noise_sigma)]))
            probe.record("noise.init_latents", noise)
            probe.record("latents.init", latents)
        return latents

    def _denoise_step(
        self,
        scheduler,
        index: int,
        t: torch.Tensor,
        latents: torch.Tensor,
        cond_lat: torch.Tensor,
        states: torch.Tensor,
        guidance_scale: float,
        streams: NoiseStreams,
        probe: Probe | None,
    ) -> torch.Tensor:
        """Reference pass, main pass, guidance, one Euler-ancestral step; randomness in the reference's order."""
        sigma = scheduler.sigmas[index].float()
        # Reference pass: the condition latent noised to this step; only its attn1 inputs are kept.
        ref_noise = _randn(cond_lat.shape, streams.reference, self.device)
        ref_input = (cond_lat + ref_noise * sigma) / ((sigma**2 + 1) ** 0.5)
        bank = ReferenceBank(mode="record")
        self._unet(ref_input, t, states, bank)

        do_cfg = guidance_scale > 1.0
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if do_cfg else latents, t)
        raw = self._unet(model_input, t, states, bank.attending())
        if do_cfg:
            uncond, cond = raw.chunk(2)
            noise_pred = uncond + guidance_scale * (cond - uncond)
        else:
            noise_pred = raw

        generator_state = streams.latent.get_state() if probe else None
        latents = scheduler.step(noise_pred, t, latents, generator=streams.latent, return_dict=False)[0]
        if probe:
            probe.record("noise.ref", ref_noise)
            probe.record(f"step{index}.ref_unet_input", ref_input)
            probe.record(f"step{index}.noise_pred_raw", raw)
            probe.record(f"step{index}.noise_pred", noise_pred)
            # The scheduler drew one N(0,1) latent from the generator; replay it from the saved state.
            replay = torch.Generator("cpu").set_state(generator_state)
            probe.record("noise.ancestral", _randn(latents.shape, replay, self.device))
            probe.record("latents.steps", latents)
        return latents

    @torch.inference_mode()
    def __call__(
        self,
        image: Image.Image,
        *,
        num_inference_steps: int = 75,
        guidance_scale: float = 4.0,
        width: int = 640,
        height: int = 960,
        prompt: str = "",
        background_rgb: tuple[int, int, int] | None = None,
        generator: torch.Generator | None = None,
        reference_generator: torch.Generator | None = None,
        callback_on_step_end: StepCallback | None = None,
        probe: Probe | None = None,
    ) -> MultiviewOutput:
        if num_inference_steps < 1:
            raise ValueError("num_inference_steps must be at least 1")
        if width % (2 * self.vae_scale_factor) or height % (3 * self.vae_scale_factor):
            raise ValueError(f"{width}x{height} does not split into a 2x3 grid of whole latent views")
        streams = NoiseStreams.of(generator, reference_generator)
        do_cfg = guidance_scale > 1.0

        rgb = composite_on_background(image, tuple(background_rgb or self.background_rgb))
        vae_pixels = preprocess(rgb, self.components.feature_extractor_vae)
        if probe:
            probe.record("pre.rgb", np.asarray(rgb))
            probe.record("pre.vae_input_uint8", vae_pixels.crop_uint8)
        cond_lat = self._encode_condition_latents(vae_pixels.pixel_values, do_cfg, streams.reference, probe)
        states = self._encoder_hidden_states(rgb, prompt, do_cfg, probe)
        if probe:
            probe.record("cond_lat", cond_lat)

        scheduler = build_scheduler(self.components.scheduler_config)
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        latents = self._initial_latents(scheduler, height, width, streams.latent, probe)
        for index, t in enumerate(scheduler.timesteps):
            latents = self._denoise_step(scheduler, index, t, latents, cond_lat, states, guidance_scale, streams, probe)
            if callback_on_step_end is not None:
                replaced = callback_on_step_end(self, index, float(t), {"latents": latents})
                if replaced and "latents" in replaced:
                    latents = replaced["latents"]

        return self._decode(latents, num_inference_steps, guidance_scale, probe)

    def _decode(
        self, latents: torch.Tensor, steps: int, guidance_scale: float, probe: Probe | None
    ) -> MultiviewOutput:
        vae = self.components.vae
        vae_latents = (latents / LATENT_SCALE + LATENT_SHIFT) / vae.config.scaling_factor
        decoded = vae.decode(vae_latents.to(vae.dtype), return_dict=False)[0].float()
        decoded = (decoded / IMAGE_SCALE_DEN * IMAGE_SCALE_NUM).cpu()
        images = (decoded[0] / 2 + 0.5).clamp(0, 1)
        images = torch.nan_to_num(images, nan=0.5)  # random-weight (dummy) runs in half precision may overflow
        grid_uint8 = np.round(images.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        if probe:
            probe.record("decoded", decoded)
            probe.record("output_uint8", grid_uint8)
        return MultiviewOutput(
            decoded=decoded,
            images=images,
            grid=Image.fromarray(grid_uint8, "RGB"),
            views=split_grid(images),
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
        )
