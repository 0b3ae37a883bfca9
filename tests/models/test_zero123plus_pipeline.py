"""Zero123++ pipeline on the project's tiny config: seeds, RNG hygiene, conditioning, loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from models.zero123plus import TINY_CONFIG_DIR, Zero123PlusPipeline, build_random_components, load_components
from models.zero123plus.components import swap_unet_weights
from models.zero123plus.factory import TINY_SIZE
from models.zero123plus.preprocess import composite_on_background
from models.zero123plus.views import split_grid
from lift3d.errors import WeightsCorrupt, WeightsMissing

WIDTH, HEIGHT = TINY_SIZE
STEPS = 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_pipeline() -> Zero123PlusPipeline:
    return Zero123PlusPipeline(build_random_components(TINY_CONFIG_DIR, seed=0))


_RUNS: dict[tuple[int, int], object] = {}


def cached_run(pipeline: Zero123PlusPipeline, seed: int, image_seed: int = 0):
    """Runs shared between tests (same pipeline, seed and image give the same result, as tested)."""
    key = (seed, image_seed)
    if key not in _RUNS:
        _RUNS[key] = run(pipeline, seed, rgba_image(image_seed))
    return _RUNS[key]


def rgba_image(seed: int, size: int = 96) -> Image.Image:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
    array[..., 3] = 0
    array[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4, 3] = 255  # an opaque square object
    return Image.fromarray(array, "RGBA")


def run(pipeline: Zero123PlusPipeline, seed: int | None, image: Image.Image | None = None, **kwargs):
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return pipeline(
        image or rgba_image(0), num_inference_steps=STEPS, width=WIDTH, height=HEIGHT, generator=generator, **kwargs
    )


def test_same_seed_same_views_different_seed_different_views(tiny_pipeline):
    first = cached_run(tiny_pipeline, seed=7)
    again = run(tiny_pipeline, seed=7)
    other = cached_run(tiny_pipeline, seed=8)
    assert first.views.shape == (6, 3, HEIGHT // 3, WIDTH // 2)
    assert torch.equal(first.views, again.views)
    assert (first.views - other.views).abs().max() > 1e-3


def test_seeded_run_leaves_the_process_rng_alone(tiny_pipeline):
    torch.manual_seed(123)
    expected_next = torch.rand(4)
    torch.manual_seed(123)
    tiny_pipeline(rgba_image(0), num_inference_steps=1, width=WIDTH, height=HEIGHT, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.rand(4), expected_next)


def test_one_generator_equals_two_identical_streams(tiny_pipeline):
    """Given one generator, both streams share it (the reference without a generator)."""
    single = cached_run(tiny_pipeline, seed=7)
    shared = torch.Generator().manual_seed(7)
    both = tiny_pipeline(
        rgba_image(0),
        num_inference_steps=STEPS,
        width=WIDTH,
        height=HEIGHT,
        generator=shared,
        reference_generator=shared,
    )
    split = tiny_pipeline(
        rgba_image(0),
        num_inference_steps=STEPS,
        width=WIDTH,
        height=HEIGHT,
        generator=torch.Generator().manual_seed(7),
        reference_generator=torch.Generator().manual_seed(8),
    )
    assert torch.equal(single.views, both.views)
    assert not torch.equal(single.views, split.views)


def test_views_depend_on_the_condition_image(tiny_pipeline):
    """Reference attention and the CLIP embedding carry the input: another image, other views."""
    a = cached_run(tiny_pipeline, seed=7, image_seed=0)
    b = cached_run(tiny_pipeline, seed=7, image_seed=1)
    assert (a.views - b.views).abs().max() > 1e-3


def test_reference_attention_changes_the_main_pass(tiny_pipeline):
    """The main pass's attn1 attends over the recorded reference tokens, so a different bank changes it."""
    from models.zero123plus.attention import ReferenceBank

    unet = tiny_pipeline.components.unet
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    sample = torch.randn(2, 4, 16, 16, generator=generator)
    banks = []
    for seed in (1, 2):
        bank = ReferenceBank(mode="record")
        cond = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(seed))
        with torch.inference_mode():
            unet(cond, 500, encoder_hidden_states=states, cross_attention_kwargs={"reference": bank})
        banks.append(bank)
    n_self_attention = sum(name.endswith("attn1.processor") for name in unet.attn_processors)
    assert len(banks[0].states) == n_self_attention > 0
    with torch.inference_mode():
        outs = [
            unet(sample, 500, encoder_hidden_states=states, cross_attention_kwargs={"reference": b.attending()})[0]
            for b in banks
        ]
        plain = unet(sample, 500, encoder_hidden_states=states)[0]
    assert (outs[0] - outs[1]).abs().max() > 1e-4
    assert (outs[0] - plain).abs().max() > 1e-4


def test_outputs_are_consistent(tiny_pipeline):
    out = cached_run(tiny_pipeline, seed=7)
    assert out.grid.size == (WIDTH, HEIGHT) and out.grid.mode == "RGB"
    assert out.decoded.shape == (1, 3, HEIGHT, WIDTH)
    assert 0.0 <= float(out.views.min()) and float(out.views.max()) <= 1.0
    grid = torch.from_numpy(np.array(out.grid)).permute(2, 0, 1).float() / 255
    assert torch.allclose(split_grid(grid), out.views, atol=0.5 / 255 + 1e-6)


def test_composite_matches_pil_rounding():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    for background in ((255, 255, 255), (127, 127, 127)):
        out = np.asarray(composite_on_background(Image.fromarray(rgba, "RGBA"), background)).astype(np.int64)
        c, a = rgba[..., :3].astype(np.int64), rgba[..., 3:].astype(np.int64)
        expected = c * a + np.array(background) * (255 - a)
        # PIL's exact divide-by-255 with rounding
        assert np.abs(out - (expected + 127) // 255).max() <= 1


def test_split_grid_is_row_major():
    grid = torch.zeros(3, 6, 4)
    for index in range(6):
        row, col = divmod(index, 2)
        grid[:, row * 2 : row * 2 + 2, col * 2 : col * 2 + 2] = index
    views = split_grid(grid)
    assert [int(v[0, 0, 0]) for v in views] == list(range(6))


def test_grid_size_must_split_into_latent_views(tiny_pipeline):
    with pytest.raises(ValueError):
        tiny_pipeline(rgba_image(0), num_inference_steps=1, width=WIDTH + 8, height=HEIGHT)


def test_saved_folder_loads_back_identically(tmp_path, tiny_pipeline, monkeypatch):
    """The diffusers-layout loader (locked mode's path) reads what the components save, and the UNet swap is strict."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    def no_slow_path(*args, **kwargs):
        raise AssertionError("UNet/VAE should load through the meta-device strict path")

    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", no_slow_path)
    monkeypatch.setattr(AutoencoderKL, "from_pretrained", no_slow_path)
    components = tiny_pipeline.components
    for name, model in components.models().items():
        model.save_pretrained(tmp_path / name)
    components.tokenizer.save_pretrained(tmp_path / "tokenizer")
    components.feature_extractor_clip.save_pretrained(tmp_path / "feature_extractor_clip")
    components.feature_extractor_vae.save_pretrained(tmp_path / "feature_extractor_vae")
    for extra in ("model_index.json", "scheduler/scheduler_config.json"):
        (tmp_path / extra).parent.mkdir(exist_ok=True)
        (tmp_path / extra).write_text((TINY_CONFIG_DIR / extra).read_text())
    loaded = Zero123PlusPipeline(load_components(tmp_path))
    assert torch.equal(run(loaded, seed=7).views, cached_run(tiny_pipeline, seed=7).views)

    state = {key: value.clone() for key, value in components.unet.state_dict().items()}
    swapped_file = tmp_path / "white_unet.safetensors"
    state["conv_in.bias"] = state["conv_in.bias"] + 1.0
    save_file(state, swapped_file)
    swap_unet_weights(loaded.components.unet, swapped_file)
    assert torch.equal(loaded.components.unet.conv_in.bias, state["conv_in.bias"])

    del state["conv_in.bias"]
    save_file(state, swapped_file)
    with pytest.raises(WeightsCorrupt):
        swap_unet_weights(loaded.components.unet, swapped_file)
    with pytest.raises(WeightsMissing):
        swap_unet_weights(loaded.components.unet, tmp_path / "absent.safetensors")


def test_missing_folder_raises_weights_missing(tmp_path):
    with pytest.raises(WeightsMissing, match="lift3d weights pull"):
        load_components(tmp_path / "sudo-ai" / "zero123plus-v1.2")


def test_half_precision_networks_track_float32(tiny_pipeline):
    """The GPU path (bf16 networks, float32 latents and sampler) runs and stays close to float32."""
    half = Zero123PlusPipeline(build_random_components(TINY_CONFIG_DIR, seed=0, dtype=torch.bfloat16))
    assert half.dtype == torch.bfloat16 and half.components.vae.dtype == torch.bfloat16
    kwargs = dict(num_inference_steps=1, width=WIDTH, height=HEIGHT)
    out_half = half(rgba_image(0), generator=torch.Generator().manual_seed(9), **kwargs)
    out_full = tiny_pipeline(rgba_image(0), generator=torch.Generator().manual_seed(9), **kwargs)
    assert out_half.views.dtype == torch.float32 and torch.isfinite(out_half.views).all()
    assert (out_half.views - out_full.views).abs().mean() < 0.02
