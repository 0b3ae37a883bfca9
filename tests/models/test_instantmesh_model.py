"""InstantMesh LRM: architecture matches the real checkpoints, cameras, loading rules, general sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.instantmesh.cameras import FOUR_VIEW_SUBSET, zero123plus_cameras
from models.instantmesh.config import LRMConfig
from models.instantmesh.loading import (
    KEY_PREFIX,
    build_empty,
    build_random,
    checkpoint_path,
    extract_lrm_state_dict,
    load_for_mode,
    load_pretrained,
    load_state_strict,
)
from lift3d.errors import WeightsCorrupt, WeightsMissing
from tests.support.paths import shared_path


def prefixed_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {KEY_PREFIX + key: value for key, value in model.state_dict().items()}


@pytest.mark.shared
@pytest.mark.parametrize("preset", ["instant-nerf-base", "instant-nerf-large", "instant-mesh-base", "instant-mesh-large"])
def test_full_size_build_has_exactly_the_checkpoint_keys_and_shapes(preset: str) -> None:
    manifest = json.loads(shared_path("golden", "instantmesh", "manifests", f"{preset}.json").read_text())
    model = build_empty(LRMConfig.preset(preset))  # meta device: no memory, no init
    ours = [(KEY_PREFIX + key, list(value.shape)) for key, value in model.state_dict().items()]
    assert ours == [(key, list(shape)) for key, shape in manifest["keys"]]
    assert sum(value.numel() for value in model.state_dict().values()) == manifest["num_parameters"]


@pytest.mark.shared
def test_cameras_equal_the_reference_encoding() -> None:
    cases = load_file(str(shared_path("golden", "instantmesh", "nerf", "cases.safetensors")))
    torch.testing.assert_close(zero123plus_cameras(1), cases["v6.cameras"], atol=1e-6, rtol=0)
    torch.testing.assert_close(zero123plus_cameras(1, views=4), cases["v4.cameras"], atol=1e-6, rtol=0)
    torch.testing.assert_close(zero123plus_cameras(2, radius=4.0 * 1.1), cases["b2.cameras"], atol=1e-6, rtol=0)


def test_camera_geometry_is_z_up_looking_at_the_origin() -> None:
    cameras = zero123plus_cameras(1)[0]
    c2w = cameras[:, :12].view(6, 3, 4)
    position, forward = c2w[:, :, 3], -c2w[:, :, 2]
    torch.testing.assert_close(position.norm(dim=-1), torch.full((6,), 4.0))
    torch.testing.assert_close(forward, -position / 4.0, atol=1e-6, rtol=0)
    assert torch.all(c2w[:, 2, 1] > 0)  # camera up has a +z component: world up is +z
    torch.testing.assert_close(cameras[:, 12:], torch.tensor([1.8660254, 1.8660254, 0.5, 0.5]).expand(6, 4))
    elevations = torch.rad2deg(torch.asin(position[:, 2] / 4.0))
    torch.testing.assert_close(elevations, torch.tensor([20.0, -10, 20, -10, 20, -10]), atol=1e-4, rtol=0)
    assert FOUR_VIEW_SUBSET == (0, 2, 4, 5)


def test_extract_drops_source_camera_explicitly_and_ignores_other_modules() -> None:
    model = build_random(LRMConfig.preset("tiny"), seed=0)
    state = prefixed_state(model)
    state["lrm_generator.source_camera"] = torch.zeros(1, 16)
    state["lpips.net.0.weight"] = torch.zeros(3)
    ours, report = extract_lrm_state_dict({"state_dict": state, "epoch": 3})
    assert set(ours) == set(model.state_dict())
    assert report.dropped == ["lrm_generator.source_camera"]
    assert report.ignored_outside_prefix == 1


def test_strict_load_refuses_missing_unexpected_and_misshapen_keys() -> None:
    config = LRMConfig.preset("tiny")
    state = build_random(config, seed=0).state_dict()
    for broken in (
        {k: v for k, v in state.items() if not k.startswith("synthesizer.")},
        {**state, "transformer.extra": torch.zeros(1)},
        {**state, "transformer.deconv.bias": torch.zeros(3)},
    ):
        with pytest.raises(WeightsCorrupt):
            load_state_strict(build_empty(config), broken)


def test_ckpt_and_safetensors_load_to_the_same_model(tmp_path: Path) -> None:
    config = LRMConfig.preset("tiny")
    source = build_random(config, seed=7).eval()
    state = prefixed_state(source)
    ckpt = tmp_path / "instant_nerf_tiny.ckpt"
    torch.save({"state_dict": {**state, "lrm_generator.source_camera": torch.ones(2, 16)}, "global_step": 1}, ckpt)
    converted = tmp_path / "instant_nerf_tiny.safetensors"
    save_file(state, str(converted))
    views, cameras = torch.rand(1, 6, 3, 320, 320), zero123plus_cameras(1)
    with torch.inference_mode():
        expected = source.forward_planes(views, cameras)
        for path in (ckpt, converted):
            model, _ = load_pretrained(config, path)
            for (name, a), (_, b) in zip(model.state_dict().items(), source.state_dict().items()):
                assert torch.equal(a, b), name
            # Not bitwise: CPU BLAS results depend on buffer placement at the 1e-7 level.
            torch.testing.assert_close(model.eval().forward_planes(views, cameras), expected, atol=1e-5, rtol=1e-5)
    assert load_pretrained(config, ckpt)[1].dropped == ["lrm_generator.source_camera"]


def test_locked_mode_without_weights_names_the_pull_command(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissing, match="lift3d weights pull"):
        checkpoint_path(tmp_path, "instant-nerf-large")
    with pytest.raises(WeightsMissing, match="--weights dummy"):
        load_for_mode("locked", "instant-nerf-base", weights_dir=tmp_path, device="cpu")


def test_tiny_mode_is_seeded_and_independent_of_the_global_rng() -> None:
    torch.manual_seed(1)
    first, _ = load_for_mode("tiny", "instant-nerf-large", weights_dir=Path("."), device="cpu")
    torch.manual_seed(2)
    second, _ = load_for_mode("tiny", "instant-nerf-large", weights_dir=Path("."), device="cpu")
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_other_patch_and_view_sizes_work_with_an_interpolated_position_table() -> None:
    """Nothing is tied to patch 16 / 320 px: patch 16 with 96-px views interpolates a 4x4 table to 6x6."""
    raw = json.loads((Path(__file__).resolve().parents[2] / "models/instantmesh/configs/tiny.json").read_text())
    raw["vit_config"].update(patch_size=16, image_size=64)
    config = LRMConfig.from_dict(raw)
    model = build_random(config, seed=3).eval()
    with torch.inference_mode():
        tokens = model.encode(torch.rand(2, 4, 3, 96, 96), zero123plus_cameras(2, views=4))
        planes = model.planes_from_tokens(tokens, 2)
    assert tokens.shape == (8, 1 + 36, config.vit.hidden_size)
    low = config.triplane_low_res
    assert planes.shape == (2, 3, config.triplane_dim, 2 * low, 2 * low)
    assert torch.isfinite(planes).all()


def test_grid_to_world_maps_the_density_grid_corners_to_the_cube_corners() -> None:
    synthesizer = build_random(LRMConfig.preset("tiny"), seed=0).synthesizer
    corners = synthesizer.grid_to_world(torch.tensor([[0.0, 0.0, 0.0], [8.0, 4.0, 0.0]]), 9)
    torch.testing.assert_close(corners, torch.tensor([[-1.0, -1.0, -1.0], [1.0, 0.0, -1.0]]))


def test_mesh_variant_loads_strictly_and_refuses_a_nerf_checkpoint(tmp_path: Path) -> None:
    from models.instantmesh.lrm import InstantMesh, InstantNeRF

    mesh_config, nerf_config = LRMConfig.preset("tiny-mesh"), LRMConfig.preset("tiny")
    assert mesh_config.variant == "mesh" and (mesh_config.grid_res, mesh_config.grid_scale) == (32, 2.1)
    source = build_random(mesh_config, seed=3).eval()
    assert isinstance(source, InstantMesh) and isinstance(build_random(nerf_config, seed=3), InstantNeRF)
    ckpt = tmp_path / "instant_mesh_tiny.ckpt"
    torch.save({"state_dict": {**prefixed_state(source), "loss_fn.net.weight": torch.ones(1)}}, ckpt)
    model, report = load_pretrained(mesh_config, ckpt)
    assert isinstance(model, InstantMesh) and report.ignored_outside_prefix == 1
    for (name, a), (_, b) in zip(model.state_dict().items(), source.state_dict().items()):
        assert torch.equal(a, b), name
    nerf_ckpt = tmp_path / "instant_nerf_tiny.ckpt"
    torch.save({"state_dict": prefixed_state(build_random(nerf_config, seed=3))}, nerf_ckpt)
    with pytest.raises(WeightsCorrupt):
        load_pretrained(mesh_config, nerf_ckpt)  # the NeRF decoder's keys are not the mesh heads'


def test_locked_mesh_mode_looks_for_the_mesh_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissing, match="instant_mesh_large"):
        load_for_mode("locked", "instant-mesh-large", weights_dir=tmp_path, device="cpu")
