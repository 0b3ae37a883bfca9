"""TripoSR: architecture matches the released checkpoint, loading rules, preprocessing, field and mesh conventions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lift3d.errors import NoForeground, WeightsCorrupt, WeightsMissing
from models.triposr import (
    TripoSRConfig,
    TriplaneNeRFField,
    build_empty,
    build_random,
    composite_on_gray,
    conditioning_images,
    extract_mesh,
    frame_foreground,
    load_for_mode,
    load_pretrained,
)
from lift3d.weights.catalog import TRIPOSR_CHECKPOINT
from models.triposr.loading import check_upstream_config
from tests.support.paths import REPO, shared_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny() -> TripoSRConfig:
    return TripoSRConfig.preset("tiny")


@pytest.mark.shared
def test_full_size_build_has_exactly_the_checkpoint_keys_and_shapes() -> None:
    manifest = json.loads(shared_path("golden", "triposr", "manifest_full.json").read_text())
    model = build_empty(TripoSRConfig.preset("triposr"))  # meta device: no memory, no init
    state = model.state_dict()
    assert [(key, list(value.shape)) for key, value in state.items()] == [(key, list(shape)) for key, shape in manifest["keys"]]
    assert sum(value.numel() for value in state.values()) == manifest["n_parameters"]
    # The ImageNet constants are not state: a strict load of the real file must not ask for them.
    assert not any(name.endswith(("image_mean", "image_std")) for name in state)


def test_full_size_model_runs_at_512_px_on_the_meta_device() -> None:
    """Shapes of the real configuration without memory: 32x32 patches from the 14x14 table, 64x64 planes."""
    model = build_empty(TripoSRConfig.preset("triposr"))
    rgb_cond = torch.empty(1, 512, 512, 3, device="meta")
    with torch.inference_mode():
        tokens = model.image_tokens(rgb_cond)
        codes = model.scene_codes_from_tokens(model.backbone_tokens(tokens))
        grid = model.field.density_grid(codes, 4)
    assert tokens.shape == (1, 1 + 32 * 32, 768)
    assert codes.shape == (1, 3, 40, 64, 64) and grid.shape == (1, 4, 4, 4)


@pytest.mark.shared
def test_shipped_preset_is_the_real_config_yaml() -> None:
    text = shared_path("configs", "triposr", "config.yaml").read_text()
    vit = json.loads(shared_path("configs", "dino-vitb16", "config.json").read_text())
    upstream = TripoSRConfig.from_upstream_yaml(text, vit)  # resolves ${tokenizer.num_channels}
    preset = TripoSRConfig.preset("triposr")
    assert upstream == TripoSRConfig(**{**vars(preset), "name": upstream.name, "mesh_resolution": 256, "mesh_threshold": 25.0})


def test_upstream_config_describing_another_model_is_refused(tmp_path: Path) -> None:
    folder = (tmp_path / TRIPOSR_CHECKPOINT).parent
    folder.mkdir(parents=True)
    preset = json.loads((REPO / "models/triposr/configs/triposr.json").read_text())["tsr"]
    (folder / "config.yaml").write_text(json.dumps(preset))  # JSON is YAML
    check_upstream_config(TripoSRConfig.preset("triposr"), tmp_path)  # the same architecture passes
    preset["backbone"]["num_layers"] = 12
    (folder / "config.yaml").write_text(json.dumps(preset))
    with pytest.raises(WeightsCorrupt, match="layers"):
        check_upstream_config(TripoSRConfig.preset("triposr"), tmp_path)


def test_unsupported_architecture_options_are_refused() -> None:
    raw = json.loads((REPO / "models/triposr/configs/tiny.json").read_text())
    for section, key, value in (
        ("renderer", "feature_reduction", "mean"),
        ("backbone", "activation_fn", "gelu"),
        ("backbone", "some_new_option", 1),
    ):
        broken = json.loads(json.dumps(raw))
        broken["tsr"][section][key] = value
        with pytest.raises(ValueError, match=key):
            TripoSRConfig.from_dict(broken)


def test_strict_load_refuses_missing_unexpected_and_misshapen_keys(tmp_path: Path) -> None:
    state = build_random(tiny(), seed=0).state_dict()
    for broken in (
        {k: v for k, v in state.items() if not k.startswith("decoder.")},
        {**state, "image_tokenizer.image_mean": torch.zeros(3)},
        {**state, "tokenizer.embeddings": torch.zeros(3, 1, 1, 1)},
    ):
        path = tmp_path / "broken.safetensors"
        save_file({k: v.contiguous() for k, v in broken.items()}, str(path))
        with pytest.raises(WeightsCorrupt):
            load_pretrained(tiny(), path)


def test_legacy_ckpt_and_safetensors_load_to_the_same_model(tmp_path: Path) -> None:
    reference = build_random(tiny(), seed=3).eval()
    state = reference.state_dict()
    folder = (tmp_path / TRIPOSR_CHECKPOINT).parent
    folder.mkdir(parents=True)
    torch.save(state, folder / "model.ckpt", _use_new_zipfile_serialization=False)  # as upstream's file
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    rgb_cond = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = reference.encode(rgb_cond)
        for path in (folder / "model.ckpt", tmp_path / "model.safetensors"):
            torch.testing.assert_close(load_pretrained(tiny(), path).encode(rgb_cond), expected, rtol=0, atol=0)


def test_locked_mode_without_weights_names_the_pull_command(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissing, match="weights pull --profile fast"):
        load_for_mode("locked", weights_dir=tmp_path, device="cpu")


def test_tiny_mode_is_seeded_and_independent_of_the_global_rng() -> None:
    torch.manual_seed(1)
    first = load_for_mode("tiny", weights_dir=Path("/nonexistent"), device="cpu")
    torch.manual_seed(2)
    second = load_for_mode("tiny", weights_dir=Path("/nonexistent"), device="cpu")
    after = torch.rand(1)
    torch.manual_seed(2)
    assert torch.equal(after, torch.rand(1))  # the build did not consume the global stream
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(("patch", "table", "cond", "plane"), [(16, 32, 64, 4), (8, 24, 40, 3), (4, 16, 16, 2)])
def test_other_sizes_encode_with_an_interpolated_position_table(patch: int, table: int, cond: int, plane: int) -> None:
    raw = json.loads((REPO / "models/triposr/configs/tiny.json").read_text())
    raw["vit"].update(patch_size=patch, image_size=table)
    raw["tsr"]["cond_image_size"] = cond
    raw["tsr"]["tokenizer"]["plane_size"] = plane
    config = TripoSRConfig.from_dict(raw)
    model = build_random(config, seed=0).eval()
    with torch.inference_mode():
        rgb_cond = model.preprocess([np.zeros((30, 50, 3), np.uint8), np.full((20, 20, 3), 200, np.uint8)])
        tokens = model.image_tokens(rgb_cond)
        codes = model.encode(rgb_cond)
    assert tokens.shape == (2, 1 + (cond // patch) ** 2, config.vit.hidden_size)
    assert codes.shape == (2, 3, config.triplane_channels, 2 * plane, 2 * plane)


def test_framing_crops_pads_square_and_keeps_the_reference_quirks() -> None:
    rgba = np.zeros((40, 30, 4), np.uint8)
    rgba[10:20, 5:25] = (200, 100, 50, 255)  # object rows 10..19, columns 5..24
    framed = frame_foreground(rgba, ratio=0.8)
    # The crop ends at the last non-zero row/column exclusively: 9 x 19, padded to 19 x 19, then to int(19 / 0.8) = 23.
    assert framed.shape == (23, 23, 4)
    rows, cols = np.nonzero(framed[..., 3])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2 + 5, 2 + 5 + 8, 2, 2 + 18)  # square pad: 5 above
    with pytest.raises(NoForeground):
        frame_foreground(np.zeros((8, 8, 4), np.uint8))


def test_composite_truncates_instead_of_rounding() -> None:
    pixel = np.array([[[35, 0, 255, 200]]], np.uint8)
    # (35/255 * a + (1 - a) * 0.5) * 255 with a = 200/255 is 54.95 in float32: truncated to 54, rounding would give 55.
    alpha = np.float32(200) / np.float32(255)
    blended = np.float32(35) / np.float32(255) * alpha + (1 - alpha) * np.float32(0.5)
    assert 54.5 < float(blended * np.float32(255)) < 55
    assert composite_on_gray(pixel)[0, 0, 0] == 54
    assert composite_on_gray(np.array([[[0, 0, 0, 0]]], np.uint8)).tolist() == [[[127, 127, 127]]]


def test_conditioning_resizes_each_image_on_its_own_to_a_square() -> None:
    a = np.zeros((10, 40, 3), np.uint8)
    b = np.full((64, 32, 3), 255, np.uint8)
    batch = conditioning_images([a, b], 16)
    assert batch.shape == (2, 16, 16, 3) and batch.dtype == torch.float32
    assert float(batch[0].max()) == 0.0 and torch.allclose(batch[1], torch.ones(16, 16, 3))
    with pytest.raises(ValueError, match="RGB"):
        conditioning_images([np.zeros((4, 4, 4), np.uint8)], 16)


class SumDensity(nn.Module):
    """Decoder stand-in: raw density = sum of the three plane features + offset, colour logits from plane 0."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        density = features.sum(dim=-1, keepdim=True) + self.offset
        return torch.cat([density, features[..., :1].expand(*features.shape[:-1], 3)], dim=-1)


def paraboloid_planes(size: int) -> torch.Tensor:
    """Scene code [1, 3, 1, S, S] whose texels hold -(u^2 + v^2) at their centres (plane units)."""
    centres = (torch.arange(size) + 0.5) / size * 2 - 1
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    return (-(u**2 + v**2)).expand(1, 3, 1, size, size).clone()


def sphere_field(radius: float, density_bias: float = -1.0) -> TriplaneNeRFField:
    config = TripoSRConfig.preset("tiny")
    config = TripoSRConfig(**{**vars(config), "radius": radius, "density_bias": density_bias})
    # Summed, the planes give -2 |p|^2; the offset puts density 25 at |p| = 0.5 in plane units.
    return TriplaneNeRFField(SumDensity(offset=1 + math.log(25.0) + 2 * 0.25), config)  # type: ignore[arg-type]


def test_planes_are_sampled_at_xy_xz_yz_in_world_units_of_the_radius() -> None:
    field = sphere_field(radius=0.6)
    codes = torch.zeros(1, 3, 1, 8, 8)
    codes[0, 2, 0, :, 6] = 1.0  # plane 2, column 6: its width axis is y, at y in (0.5, 0.75) plane units
    world_y = 0.625 * 0.6
    points = torch.tensor([[[0.0, world_y, 0.0], [world_y, 0.0, 0.0], [0.0, 0.0, world_y]]])
    features = field.query(codes, points).density_raw[0, :, 0] - field.decoder.offset
    torch.testing.assert_close(features, torch.tensor([1.0, 0.0, 0.0]))


def test_density_grid_spans_the_cube_corner_to_corner() -> None:
    field = sphere_field(radius=0.6)
    codes = paraboloid_planes(16)
    grid = field.density_grid(codes, 9, chunk=100)  # several slabs
    axis = torch.linspace(0, 1, 9) * 1.2 - 0.6
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(1, -1, 3)
    torch.testing.assert_close(grid, field.density(codes, points).view(1, 9, 9, 9))
    corners = field.grid_to_world(torch.tensor([[0.0, 0.0, 0.0], [8.0, 8.0, 8.0]]), 9)
    torch.testing.assert_close(corners, torch.tensor([[-0.6, -0.6, -0.6], [0.6, 0.6, 0.6]]))


def test_mesh_is_the_threshold_surface_in_world_coordinates() -> None:
    field = sphere_field(radius=0.6)
    mesh = extract_mesh(field, paraboloid_planes(64)[0], resolution=48, threshold=25.0, backend="pymcubes")
    distance = np.linalg.norm(mesh.vertices, axis=1)
    # |p| = 0.5 plane units is 0.3 world units; texel interpolation of the paraboloid bends it a little.
    assert len(mesh.faces) > 500 and abs(distance.mean() - 0.3) < 2e-3 and distance.std() < 2e-3
    assert mesh.vertex_colors.shape == mesh.vertices.shape and 0 <= mesh.vertex_colors.min() <= mesh.vertex_colors.max() <= 1
    # Outward winding: face normals point away from the centre (density falls outwards).
    triangles = mesh.vertices[mesh.faces]
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    assert (np.einsum("ij,ij->i", normals, triangles.mean(axis=1)) > 0).mean() > 0.99
