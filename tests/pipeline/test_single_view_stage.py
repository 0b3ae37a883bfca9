"""The fast pipeline's reconstruct stage (TripoSR): iso rules, the frame of its mesh, the whole fast engine in tiny mode."""

from __future__ import annotations

import json
import struct

import numpy as np
import pygltflib
import pytest
import torch
from PIL import Image

from lift3d.errors import InvalidOption, PipelineNotLoaded
from lift3d.settings import EngineSettings
from pipeline.engine import Engine
from pipeline.events import CancelToken, ProgressBus
from pipeline.finish import FinishStage
from pipeline.options import JobOptions, ResolvedOptions, resolve_options
from pipeline.runtime import Runtime
from pipeline.single_view import SingleViewReconstructStage
from pipeline.stage import StageContext
from pipeline.state import JobState
from tests.support.gltf_validator import assert_valid_glb
from tests.support.paths import shared_path

RADIUS = 0.87
BODY, NOSE, HAT = (np.zeros(3), 0.4), (np.array([0.55, 0.0, 0.0]), 0.15), (np.array([0.0, 0.0, 0.55]), 0.15)


class AsymmetricField:
    """A ball with a nose towards the input camera (+x), a hat on top (+z), red on its right (+y), blue on its left."""

    radius = RADIUS

    @staticmethod
    def signed(points: torch.Tensor) -> torch.Tensor:
        parts = [r - (points - torch.as_tensor(c, dtype=points.dtype)).norm(dim=-1) for c, r in (BODY, NOSE, HAT)]
        return torch.stack(parts).amax(dim=0)  # > 0 inside

    def density_grid(self, codes, resolution, *, chunk, between_chunks=None):  # noqa: ANN001 - the field protocol
        axis = torch.linspace(-RADIUS, RADIUS, resolution)
        points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
        return (25.0 + 100.0 * self.signed(points))[None]

    def grid_to_world(self, vertices, resolution):  # noqa: ANN001
        return vertices / (resolution - 1) * 2 * RADIUS - RADIUS

    def rgb(self, codes, points, *, chunk):  # noqa: ANN001
        right = (points[..., 1:2] > 0).float()
        return torch.cat([right, torch.zeros_like(right), 1 - right], dim=-1)


class FakeTripoSR:
    class config:  # noqa: N801 - what the stage reads of TripoSRConfig
        name = "asymmetric-fake"
        mesh_resolution = 48

    field = AsymmetricField()

    def preprocess(self, images):  # noqa: ANN001
        assert images[0].dtype == np.uint8 and images[0].shape[-1] == 3
        return torch.zeros(1, 8, 8, 3)

    def image_tokens(self, rgb_cond):  # noqa: ANN001
        return torch.zeros(1, 5, 4)

    def backbone_tokens(self, tokens):  # noqa: ANN001
        return torch.zeros(1, 4, 12)

    def scene_codes_from_tokens(self, tokens):  # noqa: ANN001
        return torch.zeros(1, 3, 1, 2, 2)


def _ctx(settings: EngineSettings, stage: str) -> StageContext:
    return StageContext(Runtime.from_settings(settings), stage, ProgressBus(), CancelToken(), 0.0, 1.0)


def _options(**overrides) -> ResolvedOptions:  # noqa: ANN003
    settings = EngineSettings(profile="fast")
    return resolve_options(JobOptions(seed=0, texture="vertex", target_faces=0, **overrides), settings)


def _cutout() -> Image.Image:
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    image.paste((200, 60, 40, 255), (16, 16, 48, 48))
    return image


def _accessor(gltf: pygltflib.GLTF2, index: int, width: int) -> np.ndarray:
    accessor = gltf.accessors[index]
    view = gltf.bufferViews[accessor.bufferView]
    start = (view.byteOffset or 0) + (accessor.byteOffset or 0)
    data = gltf.binary_blob()[start : start + accessor.count * width * 4]
    return np.frombuffer(data, dtype="<f4").reshape(accessor.count, width)


def _reconstruct(settings: EngineSettings, resolution: int = 48) -> JobState:
    job = JobState(options=_options(), cutout=_cutout())
    stage = SingleViewReconstructStage(FakeTripoSR(), grid_resolution_cap=resolution)  # type: ignore[arg-type]
    stage.run(job, _ctx(settings, "reconstruct"))
    return job


def test_locked_weights_cut_at_the_reference_threshold_in_the_model_cube() -> None:
    job = _reconstruct(EngineSettings(device="cpu", weights="locked", profile="fast"))
    record = job.metadata["reconstruct"]
    assert record["iso_level"] == 25.0 and record["iso_rule"] == "threshold 25"
    assert list(record["timings"]) == ["image tokens", "triplanes", "grid query", "marching cubes", "colour query"]
    assert job.mesh is not None
    # On the surface of the field (density 25 <=> signed distance 0), within a grid cell.
    signed = AsymmetricField.signed(torch.from_numpy(job.mesh.vertices).double())
    assert signed.abs().max() < 2 * RADIUS / 47
    assert job.mesh.vertices[:, 0].max() == pytest.approx(0.7, abs=0.04)  # the nose tip, unrotated


def test_random_weights_use_the_multiview_quantile_rule() -> None:
    job = _reconstruct(EngineSettings(device="cpu", weights="tiny", profile="fast"))
    record = job.metadata["reconstruct"]
    assert record["iso_rule"].startswith("quantile 0.7 of the density grid (tiny weights")
    assert record["iso_level"] != 25.0 and record["faces"] > 0


def test_the_photographed_side_faces_glb_plus_z_with_y_up_and_no_mirror() -> None:
    settings = EngineSettings(device="cpu", weights="locked", profile="fast")
    job = _reconstruct(settings)
    job.metadata.update(seed=0, weights_mode="locked")
    FinishStage().run(job, _ctx(settings, "finish"))
    assert job.glb is not None
    gltf = pygltflib.GLTF2.load_from_bytes(job.glb)
    attributes = gltf.meshes[0].primitives[0].attributes
    xyz, linear = _accessor(gltf, attributes.POSITION, 3), _accessor(gltf, attributes.COLOR_0, 3)

    hat_top = xyz[xyz[:, 1].argmax()]
    nose_tip = xyz[xyz[:, 2].argmax()]
    # The nose (towards the input camera) points to +Z, level with the body's centre...
    assert abs(nose_tip[0] - hat_top[0]) < 0.05
    assert nose_tip[2] - hat_top[2] > 1.3 * (hat_top[2] - xyz[:, 2].min())
    # ... the hat is up (+Y), and the model stands on Y = 0 ...
    assert xyz[:, 1].min() == pytest.approx(0.0, abs=1e-6)
    assert hat_top[1] - nose_tip[1] > 1.3 * (nose_tip[1] - xyz[:, 1].min())
    # ... and the camera's right (+y, red) is the viewer's right, +X: a rotation, not a mirror.
    right, left = xyz[:, 0] > hat_top[0] + 0.1, xyz[:, 0] < hat_top[0] - 0.1
    assert linear[right, 0].mean() > 0.9 and linear[right, 2].mean() < 0.1
    assert linear[left, 2].mean() > 0.9 and linear[left, 0].mean() < 0.1


def test_a_pipeline_the_profile_does_not_load_is_refused_naming_the_loaded_ones() -> None:
    with pytest.raises(PipelineNotLoaded) as refused:
        resolve_options(JobOptions(pipeline="multiview"), EngineSettings(profile="fast"))
    assert refused.value.code == "pipeline_not_loaded"
    assert refused.value.problem_fields == {"loaded_pipelines": ["fast"]}
    assert resolve_options(JobOptions(), EngineSettings(profile="fast")).pipeline == "fast"
    assert resolve_options(JobOptions(), EngineSettings(profile="all")).pipeline == "multiview"
    assert resolve_options(JobOptions(pipeline="fast"), EngineSettings(profile="all")).pipeline == "fast"
    # reconstruct_model picks InstantMesh's model: meaningless for TripoSR, so refused rather than recorded.
    assert resolve_options(JobOptions(), EngineSettings(profile="fast")).reconstruct_model == ""
    with pytest.raises(InvalidOption) as wrong:
        resolve_options(JobOptions(pipeline="fast", reconstruct_model="instant-nerf-base"), EngineSettings(profile="all"))
    assert wrong.value.code == "invalid_reconstruct_model"


def _glb_extras(glb: bytes) -> dict:
    length, _ = struct.unpack_from("<II", glb, 12)
    return json.loads(glb[20 : 20 + length])["asset"]["extras"]


@pytest.fixture(scope="module")
def fast_engine(u2netp_weights_dir) -> Engine:  # noqa: ANN001
    settings = EngineSettings(device="cpu", weights="tiny", weights_dir=str(u2netp_weights_dir), profile="fast")
    engine = Engine(settings, check_contracts=True)
    engine.warmup()
    return engine


def test_the_fast_engine_loads_only_its_own_stages(fast_engine: Engine) -> None:
    assert list(fast_engine.pipelines) == ["fast"]
    assert fast_engine.stage_names == ["decode", "background", "reconstruct", "finish"]
    assert isinstance(fast_engine.stages[2], SingleViewReconstructStage)
    with pytest.raises(PipelineNotLoaded):
        fast_engine.run(b"unused", JobOptions(pipeline="multiview"))


@pytest.mark.shared
def test_a_photo_becomes_a_textured_glb_that_names_its_pipeline_and_licences(fast_engine: Engine) -> None:
    photo = shared_path("images", "fruit.jpg").read_bytes()
    result = fast_engine.run(photo, JobOptions(seed=3, pipeline="fast", target_faces=2000, texture_size=512))
    assert list(result.timings) == ["decode", "background", "reconstruct", "finish"]
    assert result.metadata["reconstruct"]["model"] == "triposr-tiny"
    assert result.qa["texture"] == "uv" and 0 < result.qa["faces"] <= 2000 * 1.02
    assert_valid_glb(result.glb)
    extras = _glb_extras(result.glb)
    assert extras["pipeline"] == "fast" and extras["weights_mode"] == "tiny"
    licences = {row["path"]: row for row in extras["artifacts"]}
    assert licences["stabilityai/TripoSR/model.safetensors"]["licence"] == "MIT"
    assert licences["stabilityai/TripoSR/model.safetensors"]["use"] == "architecture only (tiny weights)"
    assert licences["rembg/u2netp.onnx"]["use"] == "weights"
    assert all(row["commercial_use"] for row in extras["artifacts"])


def test_the_all_profile_holds_both_pipelines_sharing_the_model_free_stages() -> None:
    engine = Engine(EngineSettings(device="cpu", weights="tiny", profile="all"))
    multiview, fast = engine.pipelines["multiview"], engine.pipelines["fast"]
    assert [s.name for s in multiview] == ["decode", "background", "multiview", "reconstruct", "finish"]
    assert [s.name for s in fast] == ["decode", "background", "reconstruct", "finish"]
    assert multiview[0] is fast[0] and multiview[-1] is fast[-1]
    assert fast[1].output_size == 512 and multiview[1].output_size is None  # TripoSR's 512 px input
    assert engine.stages is multiview  # a job without `pipeline` runs multiview
    assert set(engine.licences) == {"multiview", "fast"}
