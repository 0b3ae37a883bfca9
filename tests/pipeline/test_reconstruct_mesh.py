"""Reconstruct stage with the FlexiCubes (mesh) variant, and the per-job reconstruct_model choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from lift3d.errors import InvalidOption
from lift3d.settings import load_settings
from pipeline.events import CancelToken, ProgressBus, ProgressEvent
from pipeline.options import JobOptions, resolve_options
from pipeline.reconstruct import MESH_SUBSTEPS, SUBSTEPS, ReconstructStage
from pipeline.runtime import Runtime
from pipeline.stage import StageContext
from pipeline.state import JobState
from tests.pipeline.test_reconstruct_stage import synthetic_views

BOTH = {"engine__reconstruct__model": "instant-mesh-large", "engine__reconstruct__extra_models": ["instant-nerf-large"]}


def run_job(stage: ReconstructStage, settings, model: str | None) -> tuple[JobState, list[ProgressEvent]]:
    job = JobState(options=resolve_options(JobOptions(seed=1, reconstruct_model=model), settings.engine))
    job.views = synthetic_views()
    events: list[ProgressEvent] = []
    bus = ProgressBus()
    bus.subscribe(events.append)
    stage.run(job, StageContext(Runtime.from_settings(settings.engine), "reconstruct", bus, CancelToken(), 0.0, 1.0))
    return job, events


@pytest.fixture(scope="module")
def loaded():
    torch.set_num_threads(2)
    settings = load_settings({}, engine__weights="tiny", engine__device="cpu", **BOTH)
    stage = ReconstructStage()
    stage.load(Runtime.from_settings(settings.engine))
    return stage, settings


def test_one_stage_loads_both_variants_and_each_job_picks_one(loaded) -> None:
    stage, settings = loaded
    assert set(stage.models) == {"instant-mesh-large", "instant-nerf-large"}
    mesh_job, mesh_events = run_job(stage, settings, "instant-mesh-large")
    nerf_job, nerf_events = run_job(stage, settings, "instant-nerf-large")
    default_job, _ = run_job(stage, settings, None)
    assert [e.message for e in mesh_events] == list(MESH_SUBSTEPS)
    assert [e.message for e in nerf_events] == list(SUBSTEPS)
    assert mesh_job.metadata["reconstruct"]["model"] == "instant-mesh-large"
    assert mesh_job.metadata["reconstruct"]["extraction"] == "flexicubes"
    assert mesh_job.metadata["reconstruct"]["grid_resolution"] == 32  # the tiny mesh preset's grid
    assert nerf_job.metadata["reconstruct"]["model"] == "instant-nerf-large"
    assert default_job.metadata["reconstruct"]["model"] == "instant-mesh-large"  # the server default
    np.testing.assert_array_equal(default_job.mesh.faces, mesh_job.mesh.faces)


def test_mesh_variant_gives_a_closed_outward_coloured_mesh(loaded) -> None:
    stage, settings = loaded
    job, _ = run_job(stage, settings, "instant-mesh-large")
    mesh = job.mesh
    assert mesh is not None and len(mesh.faces) > 0
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int64
    assert np.abs(mesh.vertices).max() <= 1.05 + 1e-6  # the FlexiCubes box is 2.1 wide
    surface = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    surface.merge_vertices()
    assert surface.is_watertight and surface.is_winding_consistent
    assert surface.volume > 0  # same outward winding as the NeRF path's marching cubes
    assert mesh.vertex_colors.shape == mesh.vertices.shape and 0 <= mesh.vertex_colors.min() <= mesh.vertex_colors.max() <= 1
    np.testing.assert_allclose(mesh.color_query(mesh.vertices[:300]), mesh.vertex_colors[:300], atol=1e-5)
    assert job.metadata["reconstruct"]["iso_rule"].startswith("quantile 0.3 of the grid sdf")


def test_nerf_path_is_outward_too(loaded) -> None:
    stage, settings = loaded
    job, _ = run_job(stage, settings, "instant-nerf-large")
    assert trimesh.Trimesh(job.mesh.vertices, job.mesh.faces).volume > 0


def test_a_model_that_is_not_loaded_is_refused_with_the_list() -> None:
    settings = load_settings({}, engine__weights="tiny", **BOTH)
    with pytest.raises(InvalidOption) as refused:
        resolve_options(JobOptions(reconstruct_model="instant-nerf-base"), settings.engine)
    assert refused.value.code == "invalid_reconstruct_model"
    assert "instant-mesh-large" in refused.value.message and "instant-nerf-large" in refused.value.message
    assert resolve_options(JobOptions(), settings.engine).reconstruct_model == "instant-mesh-large"


def test_extra_models_come_from_the_environment() -> None:
    settings = load_settings({"LIFT3D_RECONSTRUCT_EXTRA_MODELS": "instant-nerf-base, instant-mesh-base"})
    assert settings.engine.reconstruct.extra_models == ("instant-nerf-base", "instant-mesh-base")
    assert settings.engine.reconstruct.loaded_models[1:] == ("instant-nerf-base", "instant-mesh-base")


@pytest.mark.gpu
@pytest.mark.parametrize("model_name", ["instant-mesh-large", "instant-mesh-base"])
def test_full_size_dummy_mesh_variant_benchmark_on_gpu(model_name: str) -> None:
    """Full-size random weights on the reference's FlexiCubes grid (128) on CUDA: sub-step times and peak memory."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import json
    import platform

    from tests.support.paths import REPO

    settings = load_settings({}, engine__weights="dummy", engine__device="cuda", engine__reconstruct__model=model_name)
    runtime = Runtime.from_settings(settings.engine)
    stage = ReconstructStage()
    stage.load(runtime)
    run_job(stage, settings, None)  # warm-up (kernels, allocator)
    torch.cuda.reset_peak_memory_stats()
    job, _ = run_job(stage, settings, None)
    record = job.metadata["reconstruct"]
    assert record["extraction"] == "flexicubes" and record["grid_resolution"] == 128
    assert job.mesh is not None and len(job.mesh.faces) > 0
    result = {
        "benchmark": "reconstruct stage, mesh variant, full-size dummy weights (random: geometry is meaningless)",
        "model": model_name,
        "weights_mode": "dummy",
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "grid_resolution": 128,
        "seconds": record["timings"],
        "peak_memory_bytes": torch.cuda.max_memory_allocated(),
        "vertices": record["vertices"],
        "faces": record["faces"],
    }
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name().replace(" ", "-").lower()
    (out / f"reconstruct-{model_name}-dummy-{gpu}.json").write_text(json.dumps(result, indent=2) + "\n")


def test_random_weights_sdf_level_keeps_the_quantile_inside_and_closes_the_box() -> None:
    from pipeline.iso_levels import choose_sdf_level, close_sdf_at_border

    settings = load_settings({}).engine.reconstruct
    sdf = torch.randn(9**3, generator=torch.Generator().manual_seed(1))
    level, rule = choose_sdf_level(sdf, weights_mode="tiny", settings=settings)
    assert abs(float((sdf < level).float().mean()) - (1 - settings.random_weights_iso_quantile)) < 2 / sdf.numel()
    assert not bool((sdf == level).any()) and rule.startswith("quantile 0.3 of the grid sdf")
    assert choose_sdf_level(sdf, weights_mode="locked", settings=settings) == (0.0, "sdf zero level")
    closed = close_sdf_at_border(sdf - level, 8).reshape(9, 9, 9)
    inner = closed[1:-1, 1:-1, 1:-1]
    assert torch.equal(inner, (sdf - level).reshape(9, 9, 9)[1:-1, 1:-1, 1:-1])
    faces = [closed[0], closed[-1], closed[:, 0], closed[:, -1], closed[:, :, 0], closed[:, :, -1]]
    assert all(bool((face > 0).all()) for face in faces)
